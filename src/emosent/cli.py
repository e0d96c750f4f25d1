"""Command line: parses arguments and calls the same public functions a Python user calls."""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import signal
import sys
import warnings
from pathlib import Path

from emosent.config import DEFAULT_LR, Launch
from emosent.encoders import WeightsUnavailableError
from emosent.files import LockedError
from emosent.signals import received, stop_on_signals

MAX_SEED = 2**32 - 1  # numpy's limit; Lightning replaces a seed outside it with a random one


def number(kind: type, minimum: float | None = None, *, above: bool = False, below: float | None = None):
    """An argparse type: a finite `kind` (int or float) >= minimum (> minimum with above=True),
    < below. Errors become argparse's one line, naming the option."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'more than' if above else 'at least'} {minimum:g}, got {text}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be less than {below:{'d' if kind is int else 'g'}}, got {text}")
        return value
    return parse


COUNT = number(int, 1)  # epochs, batch sizes, rows, nodes
WORKERS = number(int, 0)
SEED = number(int, 0, below=MAX_SEED + 1)
RATE = number(float, 0, above=True)


def cmd_make_sample(args: argparse.Namespace) -> int:
    from emosent.data.sample import make_sample

    out = make_sample(args.out, n_per_class=args.n_per_class, seed=args.seed)
    print(f"wrote a MELD-layout sample dataset to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from emosent.config import TrainConfig
    from emosent.train import train

    lr = DEFAULT_LR | {k: v for k, v in (("text", args.lr_text), ("video", args.lr_video), ("audio", args.lr_audio),
                                               ("fusion", args.lr_fusion), ("heads", args.lr_heads)) if v is not None}
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, lr=lr,
                         label_smoothing=args.label_smoothing, num_workers=args.num_workers)
    train(args.data, args.out, model_config(args), config, launch(args), resume=args.resume, cache_dir=args.cache_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emosent.evaluate import evaluate, format_table

    result = evaluate(args.model, args.data, args.split, args.out, args.cache_dir)
    print(format_table(result))
    print(f"report: {result['out']}/metrics.json and confusion_emotion.png, confusion_sentiment.png")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    import lightning as L

    from emosent.data import read_manifest
    from emosent.features import extract_features
    from emosent.model import EmotionSentimentModel

    if args.model:
        model = EmotionSentimentModel.from_pretrained(args.model)
    else:  # the seed fixes the random parts (e.g. the audio convolutions), as in `emosent train --seed`
        L.seed_everything(args.seed, verbose=False)
        model = EmotionSentimentModel(model_config(args))
    features = extract_features(model, read_manifest(args.data, args.split), args.split, args.out, batch_size=args.batch_size,
                                num_workers=args.num_workers, shard_rows=args.shard_rows, trainer_kwargs=launch(args).trainer_kwargs())
    print(f"features: {features.directory}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from emosent.analyze import analyze, write_json
    from emosent.files import check_outputs
    from emosent.plots import check_image_path, timeline_png

    # Before any work: never write over what is being read, nor find out at the end that we cannot write.
    check_outputs({"--out": args.out, "--plot": args.plot},
                  {"video": args.video, "subtitle file": args.subtitles, "transcript": args.transcript, "model folder": args.model})
    if args.plot:
        check_image_path("--plot", args.plot)
    result = analyze(args.video, args.model, subtitles=args.subtitles, transcript=args.transcript, asr=args.asr,
                     asr_model=args.asr_model, batch_size=args.batch_size, device=args.device, progress=progress_printer())
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    for s in result["skipped"]:
        print(f"skipped segment {s['start_time']:.3f}-{s['end_time']:.3f} s: {s['reason']}", file=sys.stderr)
    if args.plot:
        timeline_png(result, args.plot)
    if args.out:
        write_json(result, args.out)
        print(f"{len(result['utterances'])} utterances analysed in {result['elapsed_s']:.1f} s -> {args.out}", file=sys.stderr)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def progress_printer():
    """progress(done, total) for analyze, on stderr (stdout may carry the JSON result): a line
    updated in place on a terminal, else one line at the start and one per finished quarter."""
    quarters = [-1]

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\ranalysing: {done}/{total} segments", end="\n" if done == total else "", file=sys.stderr, flush=True)
            return
        if quarters[0] < 0:
            print(f"analysing {total} segments", file=sys.stderr, flush=True)
            quarters[0] = 0
        if 4 * done // total > quarters[0]:
            quarters[0] = 4 * done // total
            print(f"analysed {done}/{total} segments", file=sys.stderr, flush=True)
    return progress


def model_config(args: argparse.Namespace):
    from emosent.config import ModelConfig

    return ModelConfig(text_encoder=args.text_encoder, pooling=args.pooling, video_weights=args.video_weights,
                       modalities=parse_modalities(args.modalities), train_audio_conv=args.train_audio_conv)


def parse_modalities(text: str) -> tuple[str, ...]:
    from emosent.config import MODALITIES

    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown or not chosen:
        raise ValueError(f"--modalities {text!r}: use a comma-separated subset of {','.join(MODALITIES)}")
    return chosen


def launch(args: argparse.Namespace) -> Launch:
    return Launch(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy)


def devices(text: str) -> int | str:
    """--devices: auto, a count, or a comma-separated list of device ids (as Lightning takes them)."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if all(part.strip().isdigit() for part in text.split(",")) and "," in text:
        return text
    raise argparse.ArgumentTypeError(f"expected auto, a number of devices (1 or more) or ids like 0,1; got {text!r}")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--text-encoder", default="bert-base-uncased",
                   help="bert-base-uncased (the design; needs internet once), minilm (offline), tiny (tests), or a local HF model dir")
    g.add_argument("--pooling", choices=("pooler", "mean"), default="pooler", help="text pooling (default: the design's pooler)")
    g.add_argument("--video-weights", default="kinetics400",
                   help="kinetics400 (the design; needs internet once), none (random), or a local R3D-18 state-dict file")
    g.add_argument("--modalities", default="text,video,audio", help="comma-separated subset of text,video,audio")
    g.add_argument("--train-audio-conv", action="store_true", help="unfreeze the audio convolutions (trains end to end)")


def add_launch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("devices (passed to Lightning)")
    g.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, ...")
    g.add_argument("--devices", type=devices, default="auto", help="number of devices per node, or auto")
    g.add_argument("--num-nodes", type=COUNT, default=1)
    g.add_argument("--strategy", default="auto", help="auto, ddp, ... (multi-GPU / multi-node: ddp)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emosent", description="Emotion and sentiment recognition in video.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("make-sample", help="write a small synthetic dataset in the MELD layout")
    p.add_argument("out", type=Path, help="folder to create")
    p.add_argument("--n-per-class", type=COUNT, default=10, help="training clips per emotion (dev/test get half)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(run=cmd_make_sample)

    p = commands.add_parser("train", help="train on a MELD-layout folder or your own CSVs")
    p.add_argument("--data", required=True, type=Path, help="MELD-layout folder, folder with train.csv/dev.csv, or a CSV with a split column")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, TensorBoard logs, model/")
    add_model_options(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=COUNT, default=20)
    g.add_argument("--batch-size", type=COUNT, default=32)
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--label-smoothing", type=number(float, 0, below=1), default=0.05)
    for name, default in DEFAULT_LR.items():
        g.add_argument(f"--lr-{name}", type=RATE, default=None, help=f"learning rate of the {name} parameters (default {default:g})")
    g.add_argument("--num-workers", type=WORKERS, default=2, help="data loader processes")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--cache-dir", type=Path, default=None, help="where frozen features are cached (default ~/.cache/emosent)")
    add_launch_options(p)
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("extract", help="run the frozen encoders once and cache their outputs (train does this itself)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="train", choices=("train", "dev", "test"))
    p.add_argument("--out", type=Path, default=None, help="cache folder (default ~/.cache/emosent, where train looks)")
    p.add_argument("--model", type=Path, default=None, help="extract for a trained model directory instead of the model options")
    add_model_options(p)
    p.add_argument("--seed", type=SEED, default=0, help="as in train: fixes the randomly initialised frozen parts")
    p.add_argument("--batch-size", type=COUNT, default=16)
    p.add_argument("--num-workers", type=WORKERS, default=2)
    p.add_argument("--shard-rows", type=COUNT, default=256, help="rows per shard: the unit of resuming")
    add_launch_options(p)
    p.set_defaults(run=cmd_extract)

    p = commands.add_parser("evaluate", help="metrics JSON, confusion matrices and a table for a trained model")
    p.add_argument("--model", required=True, type=Path, help="model directory (RUN_DIR/model)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="test", choices=("train", "dev", "test"))
    p.add_argument("--out", type=Path, default=None, help="report folder (default: beside the model, evaluation-SPLIT/)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where frozen features are cached (default ~/.cache/emosent)")
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("analyze", help="emotion and sentiment per utterance of a video")
    p.add_argument("video", type=Path)
    p.add_argument("--model", required=True, type=Path, help="model directory (RUN_DIR/model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--subtitles", type=Path, help="segments from an .srt or .vtt file")
    src.add_argument("--transcript", type=Path, help='segments from a JSON list of {"start", "end", "text"}')
    src.add_argument("--asr", action="store_true", help="segments from speech recognition (pip install 'emosent[asr]')")
    p.add_argument("--asr-model", default="small", help="faster-whisper model size (default small)")
    p.add_argument("--out", type=Path, help="result JSON (default: printed to stdout)")
    p.add_argument("--plot", type=Path, help="timeline PNG")
    p.add_argument("--batch-size", type=COUNT, default=8)
    p.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda, cuda:1, ...")
    p.set_defaults(run=cmd_analyze)
    return parser


def quiet_libraries() -> None:
    """Keep the console for what the user asked: no library adverts or deprecation chatter."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # lightning on torch 2.14
    # The frozen encoders are in eval mode on purpose (see EmotionSentimentModel.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    no_tips = logging.Filter()
    no_tips.filter = lambda record: not str(record.msg).startswith("💡 Tip")
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(no_tips)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("train", "extract", "evaluate"):
        import lightning.pytorch  # noqa: F401  (sets up the logging handler that quiet_libraries filters)

        quiet_libraries()
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    stop_on_signals()
    try:
        return args.run(args)
    except BaseException as err:
        # After a stop signal, whatever surfaces is the stop: a library may have wrapped our
        # Interrupted in an error of its own (Lightning's logging does).
        if (signum := received()) is not None:
            print(f"emosent {args.command}: stopped by {signal.Signals(signum).name}; {after_interrupt(args)}", file=sys.stderr)
            return 128 + signum
        if isinstance(err, (ValueError, OSError, WeightsUnavailableError, LockedError, MisconfigurationException)):
            # errors meant for the user (bad argument, bad file, offline weights): one line, no traceback
            print(f"emosent {args.command}: error: {one_line(err)}", file=sys.stderr)
            return 2
        raise


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or err.__class__.__name__
    return text if not isinstance(err, OSError) or err.filename is None or str(err.filename) in text else f"{err.filename}: {text}"


def after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and the command that continues it."""
    if args.command == "train":
        last = args.out / "checkpoints" / "last.ckpt"
        again = shlex.join(["emosent", *sys.argv[1:]] + ([] if args.resume else ["--resume"]))
        if last.is_file():
            return f"{last} holds the last finished epoch; continue with: {again}"
        return f"no checkpoint had been written yet; start again with: {again}"
    if args.command == "extract":
        return "finished shards are kept in the cache; run the same command again to extract the rest"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())

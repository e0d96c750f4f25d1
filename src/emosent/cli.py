"""Command line: parses arguments and calls the same public functions a Python user calls."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from emosent.config import DEFAULT_LR, Launch
from emosent.encoders import WeightsUnavailableError


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
    from emosent.plots import timeline_png

    result = analyze(args.video, args.model, subtitles=args.subtitles, transcript=args.transcript, asr=args.asr,
                     asr_model=args.asr_model, batch_size=args.batch_size, device=args.device)
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
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    return Launch(accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes, strategy=args.strategy)


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
    g.add_argument("--devices", default="auto", help="number of devices per node, or auto")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto", help="auto, ddp, ... (multi-GPU / multi-node: ddp)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emosent", description="Emotion and sentiment recognition in video.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("make-sample", help="write a small synthetic dataset in the MELD layout")
    p.add_argument("out", type=Path, help="folder to create")
    p.add_argument("--n-per-class", type=int, default=10, help="training clips per emotion (dev/test get half)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_make_sample)

    p = commands.add_parser("train", help="train on a MELD-layout folder or your own CSVs")
    p.add_argument("--data", required=True, type=Path, help="MELD-layout folder, folder with train.csv/dev.csv, or a CSV with a split column")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, TensorBoard logs, model/")
    add_model_options(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--label-smoothing", type=float, default=0.05)
    for name, default in DEFAULT_LR.items():
        g.add_argument(f"--lr-{name}", type=float, default=None, help=f"learning rate of the {name} parameters (default {default:g})")
    g.add_argument("--num-workers", type=int, default=2, help="data loader processes")
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
    p.add_argument("--seed", type=int, default=0, help="as in train: fixes the randomly initialised frozen parts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--shard-rows", type=int, default=256, help="rows per shard: the unit of resuming")
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
    p.add_argument("--batch-size", type=int, default=8)
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
    try:
        return args.run(args)
    except (ValueError, OSError, WeightsUnavailableError) as err:
        # errors meant for the user (bad argument, bad file, offline weights): one line, no traceback
        print(f"emosent {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

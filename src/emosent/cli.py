"""Command line: parses arguments and calls the same public functions a Python user calls."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from emosent.config import BATCH, COUNT, MAX_BATCH_SIZE, DEFAULT_LR, DESIGN_LR_AUDIO, MODALITIES, PORT, TRAIN_CONV_LR_AUDIO, RATE, SEED, WORKERS, Launch, ModelConfig, ProcessorConfig, ServeConfig, TrainConfig, default_of
from emosent.encoders import FINETUNE_LR_TEXT, TEXT_ENCODERS, WeightsUnavailableError
from emosent.files import LockedError
from emosent.signals import received, stop_on_signals


def add_options(parser: argparse.ArgumentParser, config_class: type, title: str, *, skip: tuple[str, ...] = ()) -> None:
    """One option per field of `config_class` that carries option metadata (emosent.config.option):
    the name, default, type, bounds and help all come from the dataclass, never re-typed here."""
    group = parser.add_argument_group(title)
    for f in fields(config_class):
        if "help" not in f.metadata or f.name in skip:
            continue
        flag, default, meta = "--" + f.name.replace("_", "-"), default_of(f), f.metadata
        shown = ",".join(default) if isinstance(default, tuple) else default
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=meta["help"])
        elif isinstance(default, tuple):
            group.add_argument(flag, type=modalities, default=default, help=f"{meta['help']} (default {shown})")
        else:
            group.add_argument(flag, type=meta["type"] or (str if default is None else type(default)), choices=meta["choices"],
                               default=default, help=meta["help"] if default is None else f"{meta['help']} (default {shown})")


def from_options(config_class: type, args: argparse.Namespace, **values):
    """`config_class` built from the options `add_options` made (and `values`)."""
    chosen = {f.name: getattr(args, f.name) for f in fields(config_class) if "help" in f.metadata and hasattr(args, f.name)}
    return config_class(**chosen | values)


def modalities(text: str) -> tuple[str, ...]:
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"use a comma-separated subset of {','.join(MODALITIES)}, got {text!r}")
    return chosen


def cmd_make_sample(args: argparse.Namespace) -> int:
    from emosent.synthetic import make_sample

    out = make_sample(args.out, n_per_class=args.n_per_class, seed=args.seed)
    print(f"wrote a MELD-layout sample dataset to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.from_model is not None:
        from emosent.fit import train_from

        given = [flag for flag, name in (("--resume", "resume"),) if getattr(args, name)]
        if given:
            raise ValueError(f"{given[0]}: not used with --from (adapting a late fusion takes seconds; run it again)")
        model = train_from(args.from_model, args.data, args.out, cache_dir=args.cache_dir)
        print(f"model: {model} (the fusion of {args.from_model} re-fitted on {args.data}); report: {args.out / 'adapt.json'}")
        return 0
    from emosent.train import train

    lr = {name: getattr(args, f"lr_{name}") for name in DEFAULT_LR}
    config = from_options(TrainConfig, args, lr=lr)
    train(args.data, args.out, from_options(ModelConfig, args), config, from_options(Launch, args),
          processor_config=from_options(ProcessorConfig, args), resume=args.resume, cache_dir=args.cache_dir)
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    from emosent.fit import fuse

    model = fuse(pairs("--expert", args.expert), args.out, data=args.data, split=args.split,
                 calibrate={k: data_split("--calibrate", v) for k, v in pairs("--calibrate", args.calibrate).items()},
                 temperatures={k: RATE(v) for k, v in pairs("--temperature", args.temperature).items()},
                 rule=args.rule, cache_dir=args.cache_dir)
    specs = ", ".join(f"{n} (weight {e.weight:g}, temperature {e.temperature:g})" for n, e in model.config.experts.items())
    print(f"model: {args.out}: {specs}")
    return 0


def pairs(flag: str, values: list[str] | None) -> dict[str, str]:
    """NAME=VALUE options -> {NAME: VALUE}."""
    out = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{flag} {value!r}: expected NAME=VALUE, e.g. {flag} text=runs/text/model")
        out[name] = rest
    return out


def data_split(flag: str, value: str) -> tuple[str, str]:
    """DATA[:SPLIT] -> (DATA, SPLIT), dev by default."""
    data, sep, split = value.rpartition(":")
    if sep and split in ("train", "dev", "test"):
        return data, split
    return value, "dev"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emosent.evaluate import evaluate, format_table

    result = evaluate(args.model, args.data, args.split, args.out, args.cache_dir)
    print(format_table(result))
    print(f"report: {result['out']}/metrics.json and confusion_emotion.png, confusion_sentiment.png")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from emosent.features import extract

    features = extract(args.data, args.split, args.out, args.model, model_config=from_options(ModelConfig, args),
                       processor_config=from_options(ProcessorConfig, args), seed=args.seed, batch_size=args.batch_size,
                       num_workers=args.num_workers, shard_rows=args.shard_rows,
                       trainer_kwargs=from_options(Launch, args).trainer_kwargs())
    print(f"features: {features.directory}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from emosent.export import export

    out, size = export(args.model, args.out, self_contained=args.self_contained)
    print(f"model: {out} ({size:.1f} MB{', self-contained' if args.self_contained else ''})")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from emosent.analyze import analyze, write_json
    from emosent.files import check_outputs
    from emosent.plots import check_image_path, timeline_png

    if args.list_models:
        from emosent.builtin import describe_models

        print(describe_models())
        return 0
    if args.video is None:
        raise ValueError("name the video to analyse: emosent analyze VIDEO (or --list-models)")
    # Before any work: never write over what is being read, nor find out at the end that we cannot write.
    check_outputs({"--out": args.out, "--plot": args.plot},
                  {"video": args.video, "subtitle file": args.subtitles, "transcript": args.transcript, "model folder": args.model})
    if args.plot:
        check_image_path("--plot", args.plot)
    result = analyze(args.video, args.model, subtitles=args.subtitles, transcript=args.transcript, asr=args.asr,
                     asr_model=args.asr_model, language=args.language, text_for_other_languages=args.text_for_other_languages,
                     batch_size=args.batch_size, device=args.device, progress=progress_printer(),
                     speakers=args.speakers, diarise=args.diarise)
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


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from emosent.files import default_data_dir
    from emosent.serve import serve

    token = args.token if args.token is not None else os.environ.get("EMOSENT_TOKEN") or None
    serve(args.model, from_options(ServeConfig, args, data_dir=args.data_dir or default_data_dir(), token=token),
          host=args.host, port=args.port, access_log=args.access_log)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from emosent.predict import predict

    result = predict(args.data, args.out, args.model, split=args.split, batch_size=args.batch_size,
                     num_workers=args.num_workers, shard_rows=args.shard_rows, asr_model=args.asr_model, language=args.language,
                     text_for_other_languages=args.text_for_other_languages, diarise=args.diarise,
                     trainer_kwargs=from_options(Launch, args).trainer_kwargs())
    if result is not None:
        print(f"{result.rows} rows in {result.elapsed_s:.1f} s -> {result.out}", file=sys.stderr)
    return 0


def progress_printer():
    """progress(done, total) for analyze, on stderr (stdout may carry the JSON result): a progress
    bar (tqdm) on a terminal, else one line at the start and one per finished quarter."""
    quarters, bar = [-1], [None]

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            from tqdm import tqdm

            if bar[0] is None:
                bar[0] = tqdm(total=total, desc="analysing", unit="segment", file=sys.stderr)
            bar[0].update(done - bar[0].n)
            if done == total:
                bar[0].close()
            return
        if quarters[0] < 0:
            print(f"analysing {total} segments", file=sys.stderr, flush=True)
            quarters[0] = 0
        if 4 * done // total > quarters[0]:
            quarters[0] = 4 * done // total
            print(f"analysed {done}/{total} segments", file=sys.stderr, flush=True)
    return progress


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
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--cache-dir", type=Path, default=None, help="where frozen features are cached (default ~/.cache/emosent)")
    p.add_argument("--from", dest="from_model", default=None, metavar="MODEL",
                   help="adapt a late-fusion model (builtin, or a folder from emosent fuse) to --data: its fusion "
                        "(weights, temperatures, class biases) is re-fitted on the train split, its experts frozen; "
                        "the model options below are then not used")
    add_options(p, ModelConfig, "model")
    add_options(p, ProcessorConfig, "preprocessing (saved with the model as processor.json)")
    add_options(p, TrainConfig, "training")
    g = p.add_argument_group("learning rates (the design's Adam groups)")
    for name, default in DEFAULT_LR.items():
        if default is not None:
            shown = f"{default:g}"
        elif name == "audio":
            from emosent.registry import ENCODERS

            shown = f"{DESIGN_LR_AUDIO:g}, the design's; {TRAIN_CONV_LR_AUDIO:g} with --train-audio-conv" + "".join(
                f"; {spec.defaults['lr_audio']:g} with --audio-encoder {name}" for name, spec in ENCODERS["audio"].items()
                if "lr_audio" in spec.defaults)
        else:
            shown = "the text encoder's: " + ", ".join(f"{spec.defaults['lr_text']:g} for {name}" for name, spec in TEXT_ENCODERS.items()) \
                + f", {FINETUNE_LR_TEXT:g} with --finetune-text-layers"
        g.add_argument(f"--lr-{name}", type=RATE, default=default, help=f"learning rate of the {name} parameters (default {shown})")
    add_options(p, Launch, "devices (passed to Lightning)")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("extract", help="run the frozen encoders once and cache their outputs (train does this itself)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="train", choices=("train", "dev", "test"))
    p.add_argument("--out", type=Path, default=None, help="cache folder (default ~/.cache/emosent, where train looks)")
    p.add_argument("--model", default=None, help="extract for a model (builtin, or a folder of any model type) instead of the model options")
    p.add_argument("--seed", type=SEED, default=0, help="as in train: fixes the randomly initialised frozen parts")
    p.add_argument("--batch-size", type=BATCH, default=16, help=f"rows per forward pass (at most {MAX_BATCH_SIZE}: memory grows with it)")
    p.add_argument("--num-workers", type=WORKERS, default=2)
    p.add_argument("--shard-rows", type=COUNT, default=256, help="rows per shard: the unit of resuming")
    add_options(p, ModelConfig, "model (without --model)")
    add_options(p, ProcessorConfig, "preprocessing (without --model)")
    add_options(p, Launch, "devices (passed to Lightning)")
    p.set_defaults(run=cmd_extract)

    p = commands.add_parser("export", help="copy a model folder; --self-contained includes the frozen encoders it names")
    p.add_argument("--model", default="builtin", help="model: builtin (default) or a folder of any model type; an older "
                                                       "folder is written in today's format")
    p.add_argument("--out", required=True, type=Path, help="new model folder")
    p.add_argument("--self-contained", action="store_true",
                   help="write the named frozen encoders' weights too: the folder then loads anywhere, offline")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("evaluate", help="metrics JSON, confusion matrices and a table for a model (each expert's too)")
    p.add_argument("--model", default="builtin", help="model: builtin (default) or a folder of any model type (RUN_DIR/model, ...)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="test", choices=("train", "dev", "test"))
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default: evaluation-SPLIT/ beside a model folder, or here for the built-in model)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where frozen features are cached (default ~/.cache/emosent)")
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("fuse", help="join experts of one modality each into a late-fusion model, its calibration "
                                         "and weights fitted on labelled data")
    p.add_argument("--expert", action="append", required=True, metavar="NAME=MODEL",
                   help="an expert: a model folder of one modality, or builtin:NAME for one of the built-in model's "
                        "(text, audio, face); repeat for each")
    p.add_argument("--calibrate", action="append", metavar="NAME=DATA[:SPLIT]",
                   help="fit that expert's temperature on its own labelled data (split default dev)")
    p.add_argument("--temperature", action="append", metavar="NAME=T", help="that expert's temperature, fitted elsewhere")
    p.add_argument("--data", type=Path, default=None,
                   help="labelled clips with every stream: the weights, temperatures and class biases are fitted on its --split")
    p.add_argument("--split", default="dev", choices=("train", "dev", "test"))
    p.add_argument("--rule", default="mean", choices=("mean", "product"), help="how the calibrated experts join (default mean)")
    p.add_argument("--out", required=True, type=Path, help="new model folder")
    p.add_argument("--cache-dir", type=Path, default=None, help="where frozen features are cached (default ~/.cache/emosent)")
    p.set_defaults(run=cmd_fuse)

    p = commands.add_parser("analyze", help="emotion and sentiment per utterance of a video")
    p.add_argument("video", type=Path, nargs="?", help="the video (or audio) file")
    p.add_argument("--model", type=Path, default=None,
                   help="model directory (RUN_DIR/model); default: the built-in model (see --list-models)")
    p.add_argument("--list-models", action="store_true", help="say which models are built in, and exit")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--subtitles", type=Path, help="segments from an .srt or .vtt file (default: VIDEO.srt or VIDEO.vtt "
                     "beside the video when there is one, else speech recognition)")
    src.add_argument("--transcript", type=Path, help='segments from a JSON list of {"start", "end", "text"}')
    src.add_argument("--asr", action="store_true", help="segments from speech recognition even when subtitles are beside the video")
    p.add_argument("--asr-model", default="base", help="faster-whisper model: base (default, packaged, offline), or a name "
                   "faster-whisper downloads once (tiny, small, large-v3, ...) or a local CTranslate2 folder")
    p.add_argument("--language", default="auto", help="the language spoken: auto (default: speech recognition detects it) "
                   "or a Whisper code (en, fr, de, ...), which speech recognition then uses; with subtitles, says what "
                   "language they are in. Where it is not English the text expert abstains")
    p.add_argument("--text-for-other-languages", action="store_true",
                   help="keep the text expert on speech that is not English (it was trained on English only)")
    p.add_argument("--out", type=Path, help="result JSON (default: printed to stdout)")
    p.add_argument("--plot", type=Path, help="timeline PNG")
    p.add_argument("--batch-size", type=BATCH, default=8, help=f"segments per forward pass (at most {MAX_BATCH_SIZE}: memory grows with it)")
    p.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda, cuda:1, ...")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--speakers", type=COUNT, default=None, help="how many people speak (default: found from their voices); "
                     "segments whose subtitles or transcript name a speaker keep that name")
    who.add_argument("--no-speakers", dest="diarise", action="store_false", help="do not tell speakers apart by voice")
    p.set_defaults(run=cmd_analyze)

    p = commands.add_parser("serve", help="an HTTP API and a web page for analysing videos")
    p.add_argument("--model", type=Path, default=None, help="model directory (RUN_DIR/model); default: the built-in model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                                                       "any other needs a token)")
    p.add_argument("--port", type=PORT, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="jobs database, uploads in flight and results (default: the user data folder, "
                        "~/.local/share/emosent/serve on Linux)")
    p.add_argument("--token", default=None, help="API token: clients send 'Authorization: Bearer TOKEN' "
                                                 "(default $EMOSENT_TOKEN; required with a --host beyond loopback)")
    add_options(p, ServeConfig, "service")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser("predict", help="emotion and sentiment for every utterance of a dataset or a folder of videos or recordings; "
                                            "resumable, multi-process")
    p.add_argument("--data", required=True, type=Path,
                   help="a manifest (MELD-layout folder, folder with train/dev/test.csv, or a CSV; labels optional) or a "
                        "folder of videos or audio recordings (segments from NAME.srt / NAME.vtt beside each, else speech recognition)")
    p.add_argument("--out", required=True, type=Path, help="predictions: JSON Lines (.jsonl) or Parquet (.parquet, needs pyarrow); never overwritten")
    p.add_argument("--model", type=Path, default=None, help="model directory (RUN_DIR/model); default: the built-in model")
    p.add_argument("--split", default=None, choices=("train", "dev", "test"),
                   help="with a manifest folder: one split (default: every split present)")
    p.add_argument("--batch-size", type=BATCH, default=8, help=f"rows per forward pass (at most {MAX_BATCH_SIZE}: memory grows with it)")
    p.add_argument("--num-workers", type=WORKERS, default=2,
                   help="processes that read clips (decoding, face detection) beside the model (default 2)")
    p.add_argument("--shard-rows", type=COUNT, default=64, help="rows per shard: the unit of resuming and of splitting work")
    p.add_argument("--asr-model", default="base", help="faster-whisper model for videos without subtitles "
                   "(default base: packaged, offline; see analyze --asr-model)")
    p.add_argument("--language", default="auto", help="the language spoken in videos without subtitles: auto (default: "
                   "detected per video) or a Whisper code (en, fr, ...) for speech recognition to use; where it is "
                   "not English the text expert abstains on the video's rows")
    p.add_argument("--text-for-other-languages", action="store_true",
                   help="keep the text expert on speech that is not English (it was trained on English only)")
    p.add_argument("--no-speakers", dest="diarise", action="store_false",
                   help="in a folder of videos, do not tell speakers apart by voice (default: each video's segments "
                        "that name no speaker get S1, S2, ...)")
    add_options(p, Launch, "devices (passed to Lightning)")
    p.set_defaults(run=cmd_predict)
    return parser


def quiet_libraries() -> None:
    """Keep the console for what the user asked: no library adverts or deprecation chatter."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # lightning on torch 2.14
    # The frozen encoders are in eval mode on purpose (see EmotionSentimentModel.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # predict's batches never cross a shard (emosent.predict.ShardBatches): every row is returned
    warnings.filterwarnings("ignore", message=r".*custom batch sampler `ShardBatches`.*")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars for every encoder loaded
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
    if args.command in ("train", "extract", "evaluate", "predict", "fuse"):
        import lightning.pytorch  # noqa: F401  (sets up the logging handler that quiet_libraries filters)
    if args.command != "make-sample":
        quiet_libraries()
    stop_on_signals()
    try:
        return args.run(args)
    except BaseException as err:
        # After a stop signal, whatever surfaces is the stop: a library may have wrapped our
        # Interrupted in an error of its own (Lightning's logging does).
        if (signum := received()) is not None:
            print(f"emosent {args.command}: stopped by {signal.Signals(signum).name}; {after_interrupt(args)}", file=sys.stderr)
            return 128 + signum
        if isinstance(err, user_errors()):
            # errors meant for the user (bad argument, bad file, offline weights, a missing package): one line, no traceback
            print(f"emosent {args.command}: error: {one_line(err)}", file=sys.stderr)
            return 2
        raise


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors meant for the user. Lightning's MisconfigurationException only where Lightning
    was loaded (none can arise otherwise): make-sample never waits for it to import."""
    errors = (ValueError, OSError, ImportError, WeightsUnavailableError, LockedError)
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return errors if lightning is None else (*errors, lightning.MisconfigurationException)


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
    if args.command == "serve":
        return "finished results are kept; jobs that were queued or running are reported interrupted at the next start"
    if args.command == "predict":
        return f"finished shards are kept in {args.out}.parts; run the same command again to predict the rest"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())

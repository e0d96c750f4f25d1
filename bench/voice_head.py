"""Voice expert recipes through the package (issue 25, point 2): `emosent train` then `emosent evaluate`.

bench/voice.py compares heads on frozen features in one process; this script trains the same recipes
with the public command, as the built-in model's voice expert is trained, seeds 0-2, and scores:

* actors: trained on RAVDESS actors 01-14 with actors 15-18 as --split dev (where emosent train
  picks its epoch and tools/build_builtin.py fits the voice temperature), evaluated on dev (which
  flatters a little: the epoch was picked there) and on the 12 real CREMA-D clips (right of 12);
* sentence: trained on statement 01 ("Kids are talking by the door") of actors 01-14, statement 01
  of actors 15-18 as dev (the epoch pick: new speakers, the training sentence), evaluated on
  statement 02 of actors 15-18 as test (new speakers and a new sentence, never seen by the pick).

Recipes (Whisper-base, frozen, mean and std over time, then):
* today: layer 6 (the last), the MLP head (projection 128, fusion 256, hidden 64);
* layer 3, the MLP head (--audio-layer 3, BENCHMARKS' recommendation before this script);
* layer 3, --audio-head standardised-mlp (the same MLP on features z-scored with the training set's statistics);
* layer 3, --audio-head linear (standardised features, one Linear per task).

Run: PYTHONPATH=src .venv/bin/python bench/voice_head.py [--out runs/voice_head] [--only TEXT]
Each run writes its folder under OUT/PROTOCOL/RECIPE-seedK (its commands and output in RECIPE-seedK.log)
and is skipped when its evaluation is
there already (a run cut short resumes); the features are cached in OUT/cache. The table is
rewritten to OUT/table.md after every run; --report rewrites it from the finished runs alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import machine
from real_data import SENTIMENT_OF, write_ravdess_csvs
from real_video import clip_manifests

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RAVDESS, CREMA = DATA / "ravdess16k", DATA / "video" / "crema-d"
SEEDS = (0, 1, 2)
EPOCHS = 60  # today's voice expert's
RECIPES = {
    "today: layer 6, MLP": [],
    "layer 3, MLP": ["--audio-layer", "3"],
    "layer 3, standardised MLP": ["--audio-layer", "3", "--audio-head", "standardised-mlp"],
    "layer 3, linear": ["--audio-layer", "3", "--audio-head", "linear"],
}
COMMON = ["--text-encoder", "minilm", "--video-weights", "none", "--modalities", "audio", "--audio-encoder", "whisper-base",
          "--epochs", str(EPOCHS), "--num-workers", "0"]


def write_sentence_csvs(out: Path) -> Path:
    """train: statement 01 of actors 01-14; dev: statement 01 of actors 15-18; test: statement 02 of 15-18."""
    out.mkdir(parents=True, exist_ok=True)
    with open(RAVDESS / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    splits = {"train": (range(1, 15), 1), "dev": (range(15, 19), 1), "test": (range(15, 19), 2)}
    for split, (actors, statement) in splits.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "text", "emotion", "sentiment"])
            for row in rows:
                if int(row["actor"]) in actors and int(Path(row["path"]).stem.split("-")[4]) == statement:
                    writer.writerow([RAVDESS / row["path"], row["statement"], row["emotion"], SENTIMENT_OF[row["emotion"]]])
    return out


def emosent(*args, log: Path) -> None:
    command = [sys.executable, "-m", "emosent", *map(str, args)]
    with open(log, "a") as f:
        f.write(" ".join(command) + "\n")
        f.flush()
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def evaluated(model: Path, data: Path, split: str, out: Path, cache: Path, log: Path) -> dict:
    if not (out / "metrics.json").is_file():
        emosent("evaluate", "--model", model, "--data", data, "--split", split, "--out", out, "--cache-dir", cache, log=log)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {"acc": metrics["emotion"]["accuracy"], "n": metrics["examples"],
            "right": sum(r["emotion"] == r["label_emotion"] for r in rows),
            "sentiment_right": sum(r["sentiment"] == r["label_sentiment"] for r in rows),
            "answers": [r["emotion"][:3] for r in rows]}


def folder_of(out: Path, protocol: str, recipe: str, seed: int) -> Path:
    return out / protocol / f"{recipe.split(':')[0].replace(', ', '-').replace(' ', '')}-seed{seed}"


def run(protocol: str, recipe: str, seed: int, data: dict[str, Path], out: Path) -> dict:
    folder = folder_of(out, protocol, recipe, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log, cache = folder.parent / f"{folder.name}.log", out / "cache"  # beside: emosent train wants an empty --out
    model = folder / "model"
    start = time.perf_counter()
    if not (model / "config.json").is_file():
        emosent("train", "--data", data[protocol], "--out", folder, *COMMON, *RECIPES[recipe], "--seed", seed,
                "--cache-dir", cache, log=log)
    seconds = time.perf_counter() - start
    if protocol == "actors":
        return {"dev": evaluated(model, data["actors"], "dev", folder / "eval-dev", cache, log),
                "crema": evaluated(model, data["crema"], "test", folder / "eval-crema", cache, log), "s": seconds}
    return {"test": evaluated(model, data["sentence"], "test", folder / "eval-test", cache, log), "s": seconds}


def table(results: dict) -> str:
    def per_seed(protocol, recipe, key, what):
        values = [results[(protocol, recipe, s)][key][what] for s in SEEDS if (protocol, recipe, s) in results]
        return values

    def acc(values):
        return "" if not values else (f"{100 * sum(values) / len(values):.1f} [" + " / ".join(f"{100 * v:.1f}" for v in values) + "]")

    lines = ["| recipe | held-out sentence acc, mean [seeds 0 / 1 / 2] | actors 15-18 acc | CREMA-D emotion right of 12 | "
             "CREMA-D sentiment right of 12 |", "|---|---|---|---|---|"]
    for recipe in RECIPES:
        sentence = acc(per_seed("sentence", recipe, "test", "acc"))
        dev = acc(per_seed("actors", recipe, "dev", "acc"))
        crema = " / ".join(map(str, per_seed("actors", recipe, "crema", "right")))
        sentiment = " / ".join(map(str, per_seed("actors", recipe, "crema", "sentiment_right")))
        lines.append(f"| {recipe} | {sentence} | {dev} | {crema} | {sentiment} |")
    clips = [row["path"] for row in csv.DictReader(open(CREMA / "labels.csv", newline=""))]
    labels = [row["emotion"] for row in csv.DictReader(open(CREMA / "labels.csv", newline=""))]
    lines += ["", "CREMA-D clip by clip (one answer per seed):", "", "| clip | label | " + " | ".join(RECIPES) + " |",
              "|---|---|" + "---|" * len(RECIPES)]
    for i, (clip, label) in enumerate(zip(clips, labels)):
        answers = [" ".join(results[("actors", r, s)]["crema"]["answers"][i] for s in SEEDS if ("actors", r, s) in results) for r in RECIPES]
        lines.append(f"| {clip} | {label} | " + " | ".join(answers) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "voice_head")
    parser.add_argument("--only", help="recipes whose name contains this text (default: all)")
    parser.add_argument("--protocols", default="actors,sentence", help="comma-separated: actors, sentence")
    parser.add_argument("--report", action="store_true", help="train nothing: tabulate the runs that have finished")
    args = parser.parse_args()
    print(f"machine: {machine.describe()}", flush=True)
    data = {"actors": write_ravdess_csvs(RAVDESS, args.out / "data" / "actors"),
            "sentence": write_sentence_csvs(args.out / "data" / "sentence"), "crema": clip_manifests(args.out / "data")["crema-d"]}
    results = {}
    for protocol in args.protocols.split(","):
        for recipe in RECIPES:
            if args.only and args.only not in recipe:
                continue
            for seed in SEEDS:
                if args.report and not (folder_of(args.out, protocol, recipe, seed) / "model" / "config.json").is_file():
                    continue
                results[(protocol, recipe, seed)] = run(protocol, recipe, seed, data, args.out)
                brief = {k: v if k == "s" else {m: v[m] for m in ("acc", "right", "n")} for k, v in results[(protocol, recipe, seed)].items()}
                print(f"{protocol} / {recipe} / seed {seed}: {json.dumps(brief)}", flush=True)
                (args.out / "table.md").write_text(table(results) + f"\n\nMachine: {machine.describe()}.\n")
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""RAVDESS audio (actors 01-14 train -> 15-18 dev, unseen speakers): the design's audio branch
against masked pooling, trained convolutions and the frozen Whisper-base encoder, with baselines.

Variants, each with seeds 0, 1 and 2 (the seed also draws the random convolutions), each a public
`emosent train ... --modalities audio` + `emosent evaluate --split dev` run as a subprocess:

* frozen-all: the design (frozen random convolutions, AdaptiveAvgPool1d over all 300 frames);
* frozen-masked: the same, pooled over the clip's real frames only (`--audio-pooling masked`);
* trained-masked-augment: `--train-audio-conv --audio-pooling masked` (cached log-mel, the
  convolutions train at the default 1e-3 with SpecAugment-style augmentation);
* trained-masked-no-augment: the same with `--no-audio-augment`;
* whisper-base: `--audio-encoder whisper-base` (the frozen Whisper-base encoder over each clip's
  real audio, mean and std over time; the projection at the default 1e-3).

Baselines computed here on the same split: the majority class, and per-band mean and std of
emosent's own log-mel over the real frames + logistic regression (scikit-learn, standardised
features, no class weights). Every finished row is kept in OUT/rows/NAME.json: run the same
command again to go on where it stopped. OUT/table.md is rewritten after every row, with a
mean and range over the seeds per variant. Seed 0 of every variant runs first, then seeds 1 and 2
(see `rows`).
Wall time is the row's train + evaluate; its features are extracted first by `emosent extract`
(timed in the note). Peak memory is the largest resident set of the row's processes.

Needs scikit-learn: pip install -e '.[bench]'.
Run: .venv/bin/python bench/ravdess.py [--out runs/ravdess] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from emosent.data import read_manifest
from emosent.labels import EMOTIONS, SENTIMENTS

import machine
import meld_text
from meld_text import METRICS, TASKS, Row, keep_row, kept_row, pct, scores, setting_options
from real_data import write_ravdess_csvs

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO.parent / "shared" / "data" / "ravdess16k"
COMMON = ["--text-encoder", "minilm", "--video-weights", "none", "--modalities", "audio"]
FROZEN = ["--epochs", "60"]  # the design's LR 8e-5 moves the projection slowly: converged by about epoch 45 (BENCHMARKS.md)
TRAINED = ["--train-audio-conv", "--audio-pooling", "masked", "--epochs", "30"]  # the default --lr-audio 1e-3
VARIANTS = {
    "frozen-all": FROZEN,
    "frozen-masked": [*FROZEN, "--audio-pooling", "masked"],
    "trained-masked-augment": TRAINED,
    "trained-masked-no-augment": [*TRAINED, "--no-audio-augment"],
    # the frozen Whisper-base encoder over each clip's real audio (--lr-audio defaults to 1e-3 then)
    "whisper-base": ["--audio-encoder", "whisper-base", "--epochs", "60"],
}
SEEDS = (0, 1, 2)
FEATURE_OPTIONS = ("--train-audio-conv", "--audio-pooling", "--audio-encoder")  # beside meld_text's: what decides the cached features


def rows() -> list[Row]:
    """Seed 0 of every variant, then the other seeds, the proposed variant first and the design
    (measured before, in BENCHMARKS.md's "RAVDESS, audio only") last."""
    order = ["whisper-base", "trained-masked-augment", "frozen-masked", "trained-masked-no-augment", "frozen-all"]
    first = [Row(f"{name}-seed0", [*VARIANTS[name], "--seed", "0"]) for name in VARIANTS]
    return first + [Row(f"{name}-seed{seed}", [*VARIANTS[name], "--seed", str(seed)]) for name in order for seed in SEEDS[1:]]


def extract_options(options: list[str]) -> list[str]:
    """The options of `emosent extract` that give a row's features (flags without a value included)."""
    out = setting_options([o for o in options if o not in ("--train-audio-conv", "--no-audio-augment")])
    for name in ("--audio-pooling", "--audio-encoder"):
        if name in options:
            out += options[options.index(name) : options.index(name) + 2]
    return out + [o for o in options if o == "--train-audio-conv"]


def train_row(row: Row, data: Path, out: Path, cache: Path) -> Row:
    row = meld_text.train_row(row, out, cache, data=data, common=COMMON, extract_options=extract_options)
    training = json.loads((out / "runs" / row.name / "model" / "training.json").read_text())
    row.note += f"; lr-audio {training['train_config']['lr']['audio']:g}"
    return row


# ------------------------------------------------------------------------------- baselines


def baselines(data: Path, cache: Path) -> list[Row]:
    """Majority class, and log-mel statistics + logistic regression, train -> dev."""
    train, dev = read_manifest(data, "train"), read_manifest(data, "dev")
    labels = {split: {t: [c.index(getattr(u, t)) for u in rows] for t, c in TASKS.items()} for split, rows in (("train", train), ("dev", dev))}
    majority = {t: Counter(labels["train"][t]).most_common(1)[0][0] for t in TASKS}
    result = [Row(f"majority ({EMOTIONS[majority['emotion']]} / {SENTIMENTS[majority['sentiment']]})", [],
                  {t: scores([majority[t]] * len(dev), labels["dev"][t], len(c)) for t, c in TASKS.items()})]
    start = time.perf_counter()
    x_train, x_dev = (log_mel_statistics(split_rows, split, cache) for split_rows, split in ((train, "train"), (dev, "dev")))
    result.append(Row("log-mel mean + std per band (real frames) + logistic regression", [], fit_lr(x_train, x_dev, labels),
                      time.perf_counter() - start, note="emosent's own cached log-mel, as the trained rows read it"))
    return result


def log_mel_statistics(rows, split: str, cache: Path):
    """(N, 2M): each band's mean and standard deviation over the clip's real frames, from the
    log-mel that emosent caches for `--train-audio-conv` (the same processor, the same frames)."""
    from emosent import EmotionSentimentModel, ModelConfig
    from emosent.features import extract_features

    model = EmotionSentimentModel(ModelConfig(text_encoder="minilm", video_weights="none", modalities=("audio",),
                                              train_audio_conv=True, audio_pooling="masked"))
    features = extract_features(model, rows, split, cache, num_workers=0)
    assert len(features) == len(rows), features.skipped.summary()
    mel, lengths = features.tensors["audio_features"].squeeze(1), features.tensors["audio_lengths"]  # (N, M, F), (N,)
    real = (torch.arange(mel.shape[-1]) < lengths[:, None]).float()[:, None, :]  # (N, 1, F)
    n = real.sum(-1).clamp(min=1)
    mean = (mel * real).sum(-1) / n
    std = (((mel - mean[..., None]) ** 2 * real).sum(-1) / n).sqrt()
    return torch.cat([mean, std], dim=1).numpy()


def fit_lr(x_train, x_dev, labels) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    result = {}
    for task, classes in TASKS.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        model.fit(x_train, labels["train"][task])
        result[task] = scores(model.predict(x_dev).tolist(), labels["dev"][task], len(classes))
    return result


# ---------------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    head = ("| row | options beyond the common ones | emotion acc | emotion w-F1 | emotion macro-F1 | sentiment acc | "
            "sentiment w-F1 | sentiment macro-F1 | best/run epochs | wall s | peak MB | note |")
    lines = [f"Common: `emosent train {' '.join(COMMON)} --data RAVDESS-CSVS`; `emosent evaluate --split dev` "
             "(actors 15-18, 240 recordings). Scores in %.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        e, s = r.metrics.get("emotion", {}), r.metrics.get("sentiment", {})
        cells = [r.name, f"`{' '.join(r.options)}`" if r.options else "", *(pct(e.get(m)) for m in METRICS),
                 *(pct(s.get(m)) for m in METRICS), r.epochs, f"{r.wall_s:.0f}" if r.wall_s else "",
                 f"{r.peak_mb:.0f}" if r.peak_mb else "", r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per variant: the mean over its finished seeds and the range (min-max)."""
    head = ("| variant | seeds | emotion acc | emotion w-F1 | emotion macro-F1 | sentiment acc | sentiment w-F1 | "
            "sentiment macro-F1 | wall s (mean) | peak MB (max) |")
    lines = ["Mean over seeds [min-max], in %.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for name in VARIANTS:
        mine = [r for r in rows if r.name.rsplit("-seed", 1)[0] == name and r.metrics]
        if not mine:
            continue
        cells = [name, ",".join(r.name.rsplit("seed", 1)[1] for r in mine)]
        for task in TASKS:
            for m in METRICS:
                values = [100 * r.metrics[task][m] for r in mine]
                cells.append(f"{sum(values) / len(values):.1f} [{min(values):.1f}-{max(values):.1f}]")
        cells += [f"{sum(r.wall_s for r in mine) / len(mine):.0f}", f"{max(r.peak_mb for r in mine):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ravdess")
    parser.add_argument("--only", help="comma-separated row names (default: all, in order)")
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "rows").mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    data = write_ravdess_csvs(RAVDESS, out / "data")
    print(f"machine: {machine.describe()}\nout: {out}", flush=True)

    def keep(row: Row) -> None:
        finished = keep_row(out, row)
        (out / "table.md").write_text(summary(finished) + "\n\n" + table(finished) + f"\n\nMachine: {machine.describe()}.\n")

    if not (out / "baselines.done").is_file():
        for row in baselines(data, cache):
            keep(row)
        (out / "baselines.done").touch()
    wanted = set(args.only.split(",")) if args.only else None
    for row in rows():
        if (wanted and row.name not in wanted) or kept_row(out, row.name):
            continue
        print(f"RAVDESS {row.name}", flush=True)
        keep(train_row(row, data, out, cache))
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

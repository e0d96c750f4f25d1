"""Evaluate a trained model on a split: metrics JSON, each utterance's prediction (JSON Lines, the
rows `emosent predict` writes), confusion-matrix PNGs, a table on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from emosent.data import Utterance, read_manifest
from emosent.features import FeatureDataset, Features, collate_features, extract_features
from emosent.files import write_atomically
from emosent.metrics import TASKS, task_metrics
from emosent.model import EmotionSentimentModel, EmotionSentimentOutput, model_inputs
from emosent.plots import confusion_png
from emosent.records import Recorder, utterance_row

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


@torch.no_grad()
def outputs(model: EmotionSentimentModel, dataset: FeatureDataset, batch_size: int = 256) -> Iterator[tuple[dict, EmotionSentimentOutput]]:
    """(batch, the model's output) over cached frozen features, in the dataset's order."""
    model.eval()
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_features):
        yield batch, model(**model_inputs(batch))


def predict_features(model: EmotionSentimentModel, dataset: FeatureDataset, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Softmax probabilities per task: emotion (N, 7), sentiment (N, 3), from cached frozen features."""
    chunks = {task: [] for task in TASKS}
    for _, out in outputs(model, dataset, batch_size):
        chunks["emotion"].append(out.emotion_logits.softmax(-1))
        chunks["sentiment"].append(out.sentiment_logits.softmax(-1))
    return {task: torch.cat(c) for task, c in chunks.items()}


def predictions(model: EmotionSentimentModel, features: Features, records: list[Utterance], recorder: Recorder) -> list[dict]:
    """Each example's row (`emosent.records.utterance_row`), in manifest order."""
    rows = []
    for batch, out in outputs(model, FeatureDataset(features)):
        utterances = [records[i] for i in batch["index"].tolist()]
        rows += [utterance_row(u, str(u.path) if u.path else "", record)
                 for u, record in zip(utterances, recorder(out, [u.source for u in utterances], batch))]
    return rows


def task_report(probs: torch.Tensor, target: torch.Tensor, classes: tuple[str, ...]) -> dict:
    k = len(classes)
    report = {name.split("/")[-1]: float(v) for name, v in task_metrics(k, prefix="")(probs, target).items()}
    per_class = {
        "precision": MulticlassPrecision(k, average=None, zero_division=0)(probs, target),
        "recall": MulticlassRecall(k, average=None, zero_division=0)(probs, target),
        "f1": MulticlassF1Score(k, average=None, zero_division=0)(probs, target),
    }
    support = torch.bincount(target, minlength=k)
    report["per_class"] = {
        c: {**{m: float(v[i]) for m, v in per_class.items()}, "support": int(support[i])} for i, c in enumerate(classes)
    }
    report["confusion_matrix"] = MulticlassConfusionMatrix(k)(probs, target).tolist()
    return report


def evaluate(model_dir: str | Path, data: str | Path, split: str = "test", out: str | Path | None = None,
             cache_dir: str | Path | None = None) -> dict:
    """Metrics of the model in `model_dir` on `split` of `data`, written to `out` (default:
    beside the model directory, `evaluation-{split}/`) as metrics.json, predictions.jsonl (one row
    per scored example, as `emosent predict` writes them) and confusion PNGs."""
    model_dir = Path(model_dir)
    out = Path(out) if out else model_dir.parent / f"evaluation-{split}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; name a folder for the report")
    model = EmotionSentimentModel.from_pretrained(model_dir)
    records = read_manifest(data, split)
    features = extract_features(model, records, split, Path(cache_dir) if cache_dir else None)
    if not len(features):
        raise ValueError(f"no usable {split} clip to evaluate: {features.skipped.summary()}")
    probs = predict_features(model, FeatureDataset(features))
    rows = predictions(model, features, records, Recorder.of(model, str(model_dir)))
    result = {"model": str(model_dir), "data": str(data), "split": split, "examples": len(features),
              "skipped": dict(features.skipped.reasons)}
    out.mkdir(parents=True, exist_ok=True)
    for task, classes in TASKS.items():
        result[task] = task_report(probs[task], features.tensors[task], classes)
        confusion_png(torch.tensor(result[task]["confusion_matrix"]).numpy(), classes,
                      f"{task} ({split}, n={len(features)})", out / f"confusion_{task}.png")
    text = json.dumps(result, indent=2) + "\n"
    write_atomically(out / METRICS_FILE, lambda tmp: tmp.write_text(text))
    lines = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    write_atomically(out / PREDICTIONS_FILE, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    result["out"] = str(out)
    return result


def format_table(result: dict) -> str:
    names = ("accuracy", "weighted_precision", "weighted_f1", "macro_f1")
    lines = [f"{result['split']}: {result['examples']} examples" + (f", skipped {result['skipped']}" if result["skipped"] else ""),
             f"{'task':<10}" + "".join(f"{n:>20}" for n in names)]
    for task in TASKS:
        lines.append(f"{task:<10}" + "".join(f"{result[task][n]:>20.4f}" for n in names))
    return "\n".join(lines)

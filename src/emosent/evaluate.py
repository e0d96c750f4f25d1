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
from emosent.builtin import BUILTIN_NAME, load_model
from emosent.model import EmotionSentimentOutput, model_inputs
from emosent.pretrained import PretrainedModel
from emosent.plots import confusion_png
from emosent.records import Recorder, utterance_row

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


@torch.no_grad()
def outputs(model: PretrainedModel, dataset: FeatureDataset, batch_size: int = 256) -> Iterator[tuple[dict, EmotionSentimentOutput]]:
    """(batch, the model's output) over cached frozen features, in the dataset's order."""
    model.eval()
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_features):
        yield batch, model(**model_inputs(batch))


def predict_features(model: PretrainedModel, dataset: FeatureDataset, batch_size: int = 256) -> dict:
    """Softmax probabilities per task from cached frozen features: emotion (N, 7), sentiment (N, 3),
    and for a late fusion "experts": expert -> {"emotion", "sentiment" (N, k) probabilities,
    "present" (N,) bool}."""
    chunks: dict = {task: [] for task in TASKS}
    experts: dict = {}
    for _, out in outputs(model, dataset, batch_size):
        chunks["emotion"].append(out.emotion_logits.softmax(-1))
        chunks["sentiment"].append(out.sentiment_logits.softmax(-1))
        for name, (emotion, sentiment, present) in (out.experts or {}).items():
            for key, value in (("emotion", emotion.exp()), ("sentiment", sentiment.exp()), ("present", present)):
                experts.setdefault(name, {}).setdefault(key, []).append(value)
    result = {task: torch.cat(c) for task, c in chunks.items()}
    if experts:
        result["experts"] = {name: {k: torch.cat(v) for k, v in parts.items()} for name, parts in experts.items()}
    return result


def predictions(model: PretrainedModel, features: Features, records: list[Utterance], recorder: Recorder) -> list[dict]:
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


def evaluate(model: str | Path | PretrainedModel | None, data: str | Path, split: str = "test", out: str | Path | None = None,
             cache_dir: str | Path | None = None) -> dict:
    """Metrics of `model` (a folder of any model type, a loaded model, or None / "builtin") on
    `split` of `data`, written to `out` as metrics.json and confusion PNGs. Default `out`: beside
    a model folder, `evaluation-{split}/`; for the built-in or a loaded model, `evaluation-{split}/`
    here. A late fusion also gets each expert's metrics alone, on the rows where it answered.
    predictions.jsonl holds one row per scored example, as `emosent predict` writes them."""
    loaded = load_model(model)
    folder = None if model is None or isinstance(model, torch.nn.Module) or str(model) == BUILTIN_NAME else Path(model)
    out = Path(out) if out else (folder.parent if folder else Path.cwd()) / f"evaluation-{split}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; name a folder for the report")
    records = read_manifest(data, split)
    features = extract_features(loaded, records, split, Path(cache_dir) if cache_dir else None)
    if not len(features):
        raise ValueError(f"no usable {split} clip to evaluate: {features.skipped.summary()}")
    probs = predict_features(loaded, FeatureDataset(features))
    rows = predictions(loaded, features, records, Recorder.of(loaded))
    result = {"model": loaded.name_or_path or str(model), "data": str(data), "split": split, "examples": len(features),
              "skipped": dict(features.skipped.reasons)}
    out.mkdir(parents=True, exist_ok=True)
    for task, classes in TASKS.items():
        result[task] = task_report(probs[task], features.tensors[task], classes)
        confusion_png(torch.tensor(result[task]["confusion_matrix"]).numpy(), classes,
                      f"{task} ({split}, n={len(features)})", out / f"confusion_{task}.png")
    if "experts" in probs:
        result["experts"] = {}
        for name, expert in probs["experts"].items():
            present = expert["present"]
            entry = {"examples": int(present.sum())}  # the rows where it answered (it abstains without its input)
            if entry["examples"]:
                entry.update({task: task_report(expert[task][present], features.tensors[task][present], classes)
                              for task, classes in TASKS.items()})
            result["experts"][name] = entry
    text = json.dumps(result, indent=2) + "\n"
    write_atomically(out / METRICS_FILE, lambda tmp: tmp.write_text(text))
    lines = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    write_atomically(out / PREDICTIONS_FILE, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    result["out"] = str(out)
    return result


def format_table(result: dict) -> str:
    names = ("accuracy", "weighted_precision", "weighted_f1", "macro_f1")
    lines = [f"{result['split']}: {result['examples']} examples" + (f", skipped {result['skipped']}" if result["skipped"] else ""),
             f"{'task':<22}" + "".join(f"{n:>20}" for n in names)]
    for task in TASKS:
        lines.append(f"{task:<22}" + "".join(f"{result[task][n]:>20.4f}" for n in names))
    for name, expert in result.get("experts", {}).items():  # each expert alone, where it answered
        for task in TASKS:
            label = f"{task} ({name}, {expert['examples']})"
            if task in expert:
                lines.append(f"{label:<22}" + "".join(f"{expert[task][n]:>20.4f}" for n in names))
            else:
                lines.append(f"{label:<22}" + f"{'abstained on every row':>20}")
    return "\n".join(lines)

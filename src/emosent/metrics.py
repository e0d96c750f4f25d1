"""Classification metrics per task (torchmetrics: correct across devices)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision

from emosent.labels import EMOTIONS, SENTIMENTS

TASKS = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}


def task_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """accuracy, weighted precision, weighted F1 and macro F1, logged as `{prefix}{name}`."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "weighted_precision": MulticlassPrecision(num_classes, average="weighted", zero_division=0),
            "weighted_f1": MulticlassF1Score(num_classes, average="weighted", zero_division=0),
            "macro_f1": MulticlassF1Score(num_classes, average="macro", zero_division=0),
        },
        prefix=prefix,
    )

"""Figures (matplotlib, headless): confusion matrices and analysis timelines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from emosent.files import write_atomically  # noqa: E402


def confusion_png(matrix: np.ndarray, labels: tuple[str, ...], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts: rows are true labels, columns predictions.

    Not torchmetrics' `MulticlassConfusionMatrix.plot` (compared on the same matrix): it colours
    by raw count, so on MELD the neutral row (47% of the data) takes the whole colour scale and a
    minority class's recall is invisible; with normalize="true" it loses the counts. Here the
    colour is the fraction of the true class and the count is written in each cell."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2.5, 1.0 * len(labels) + 2))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{counts[i, j]}", ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


EMOTION_COLOURS = {"anger": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "joy": "#ffbf00",
                   "neutral": "#9e9e9e", "sadness": "#1f77b4", "surprise": "#17becf"}
SENTIMENT_COLOURS = {"negative": "#c0392b", "neutral": "#bdbdbd", "positive": "#27ae60"}


def timeline_png(result: dict, path: Path) -> Path:
    """One band per utterance, coloured by its top emotion (upper row) and sentiment (lower row);
    opacity follows the confidence, and wide bands carry their label."""
    utterances = result["utterances"]
    duration = max(result["duration_s"], 1e-3)
    fig, ax = plt.subplots(figsize=(13, 3.6))
    for u in utterances:
        start, width = u["start_time"], u["end_time"] - u["start_time"]
        for row, top, colours in ((1.1, u["emotions"][0], EMOTION_COLOURS), (0.1, u["sentiments"][0], SENTIMENT_COLOURS)):
            ax.broken_barh([(start, width)], (row, 0.8), facecolors=colours[top["label"]],
                           alpha=0.35 + 0.65 * top["confidence"], edgecolor="white")
            if width > 0.05 * duration:
                ax.text(start + width / 2, row + 0.4, top["label"], ha="center", va="center", fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_ylim(0, 2)
    ax.set_yticks([0.5, 1.5], ["sentiment", "emotion"])
    ax.set_xlabel("time (s)")
    ax.set_title(f"{Path(result['video']).name}: {len(utterances)} utterances (opacity = confidence)")
    for title, colours, corner in (("emotion", EMOTION_COLOURS, "lower left"), ("sentiment", SENTIMENT_COLOURS, "lower right")):
        fig.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()], list(colours), title=title,
                   loc=corner, ncol=len(colours), frameon=False, fontsize=8, title_fontsize=8)
    fig.subplots_adjust(bottom=0.36, left=0.08, right=0.98)
    fmt = Path(path).suffix.lstrip(".").lower()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    finally:
        plt.close(fig)


def check_image_path(option: str, path: Path) -> None:
    """Refuse, before any work, an image path whose extension matplotlib cannot write."""
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise ValueError(f"{option} {path}: cannot write a {path.suffix or 'extension-less'} image; "
                         f"end the name with one of {', '.join('.' + f for f in sorted(formats))}")

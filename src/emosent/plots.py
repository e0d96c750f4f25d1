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


# The timeline's layout, in inches: each speaker's lane (an emotion row above a sentiment row) is
# LANE_IN high; the legends take LEGEND_IN beneath the axes and the title TITLE_IN above them.
WIDTH_IN, LANE_IN, LEGEND_IN, TITLE_IN = 13, 1.6, 1.3, 0.45
ROW, LANE = 1.0, 2.4  # a row's and a lane's height in data units: 0.2 between a lane's rows and its neighbour's
NAME_CHARS = 18  # a longer speaker name is cut (with "…") on the lane's label
TICK_CHAR_IN = 0.075  # the width of a tick label's character (DejaVu Sans at 10 pt), to size the left margin


def lanes(utterances: list[dict]) -> list[str | None]:
    """The timeline's lanes, top to bottom: each speaker in order of first appearance (None for the
    utterances without one); a single lane [None] when no speaker is known."""
    return list(dict.fromkeys(u.get("speaker") for u in sorted(utterances, key=lambda u: u["start_time"]))) or [None]


def short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "…"


def timeline_png(result: dict, path: Path) -> Path:
    """One lane per speaker (one lane when no speaker is known), each with one band per utterance
    of that speaker, coloured by its top emotion (upper row) and sentiment (lower row); opacity
    follows the confidence, and wide bands carry their label."""
    utterances = result["utterances"]
    duration = max(result["duration_s"], 1e-3)
    order = lanes(utterances)
    height = LEGEND_IN + TITLE_IN + LANE_IN * len(order)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, height))
    ticks, names = [], []
    for k, speaker in enumerate(order):
        base = (len(order) - 1 - k) * LANE  # the first speaker's lane on top
        who = "" if order == [None] else f"{short(speaker) if speaker is not None else '(unknown)'} · "
        ticks += [base + 0.1 + ROW / 2, base + 0.1 + ROW * 1.2 + ROW / 2]
        names += [f"{who}sentiment", f"{who}emotion"]
        if k:
            ax.axhline(base + LANE - 0.05, color="#cccccc", linewidth=0.8)
        for u in (u for u in utterances if u.get("speaker") == speaker):
            start, width = u["start_time"], u["end_time"] - u["start_time"]
            for row, top, colours in ((base + 0.1 + ROW * 1.2, u["emotions"][0], EMOTION_COLOURS),
                                      (base + 0.1, u["sentiments"][0], SENTIMENT_COLOURS)):
                ax.broken_barh([(start, width)], (row, ROW), facecolors=colours[top["label"]],
                               alpha=0.35 + 0.65 * top["confidence"], edgecolor="white")
                if width > 0.05 * duration:
                    ax.text(start + width / 2, row + ROW / 2, top["label"], ha="center", va="center", fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_ylim(0, len(order) * LANE - 0.1)
    ax.set_yticks(ticks, names)
    ax.set_xlabel("time (s)")
    known = [s for s in order if s is not None]
    who = f", {len(known)} speakers" if known else ""
    ax.set_title(f"{Path(result['video']).name}: {len(utterances)} utterances{who} (opacity = confidence)")
    for title, colours, corner in (("emotion", EMOTION_COLOURS, "lower left"), ("sentiment", SENTIMENT_COLOURS, "lower right")):
        fig.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()], list(colours), title=title,
                   loc=corner, ncol=len(colours), frameon=False, fontsize=8, title_fontsize=8)
    left_in = 0.3 + TICK_CHAR_IN * max(map(len, names))
    fig.subplots_adjust(bottom=LEGEND_IN / height, top=1 - TITLE_IN / height, left=left_in / WIDTH_IN, right=0.98)
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

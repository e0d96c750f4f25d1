"""Datasets as lists of utterances: MELD's layout, or a user's own CSV.

MELD: a folder with `{train,dev,test}_sent_emo.csv` and the MELD.Raw clip folders. A user's
data: a CSV with columns `path, text, emotion, sentiment` (optional `start`, `end` in seconds,
optional `split`; optional `dialogue`, `speaker` and `order` for conversations), paths relative
to the CSV; or a folder with `train.csv`, `dev.csv`, `test.csv`.

Each utterance carries the earlier utterances of its dialogue (`history`, with speakers): MELD's
`Dialogue_ID` ordered by `Utterance_ID`; a user's `dialogue` column ordered by `order`, else by
row. The processor's `context` setting decides how many of them the text encoder reads.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import ftfy

from emosent.labels import EMOTIONS, SENTIMENTS

SPLITS = ("train", "dev", "test")
MELD_CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_COLUMNS = ("Utterance", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
USER_COLUMNS = ("path", "text", "emotion", "sentiment")
MAX_REPORTED_ROWS = 5


class ManifestError(ValueError):
    """A dataset file that cannot be read; the message names the file, the rows and what to do."""


@dataclass(frozen=True)
class Utterance:
    """One utterance. `path` is its media file (may not exist for text-only use); `start`/`end`
    are seconds within it (None: the whole file); `source` is "file:line". Labels are None for
    utterances to analyse."""

    text: str
    emotion: str | None
    sentiment: str | None
    path: Path | None
    start: float | None = None
    end: float | None = None
    source: str = ""
    speaker: str | None = None
    history: tuple[tuple[str | None, str], ...] = ()  # (speaker, text) of the dialogue's earlier utterances, oldest first


def with_history(utterances: list[Utterance], dialogues: list[str | None], order: list[float]) -> list[Utterance]:
    """`utterances` (in their original order) with `history` filled from the earlier utterances of
    the same dialogue; a None dialogue is an utterance on its own."""
    by_dialogue: dict[str, list[int]] = {}
    for i, dialogue in enumerate(dialogues):
        if dialogue is not None:
            by_dialogue.setdefault(dialogue, []).append(i)
    out = list(utterances)
    for members in by_dialogue.values():
        members.sort(key=lambda i: (order[i], i))
        for k, i in enumerate(members):
            out[i] = replace(utterances[i], history=tuple((utterances[j].speaker, utterances[j].text) for j in members[:k]))
    return out


def read_manifest(path: str | Path, split: str | None = "train", *, labels: bool = True) -> list[Utterance]:
    """The utterances of `split` ("train", "dev", "test"; None: every row of a single CSV).
    labels=False (prediction): a user's CSV needs only `path` and `text`; an empty or absent
    emotion/sentiment gives None, a present one must still be a known label."""
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if path.is_dir():
        if split is None:
            raise ValueError(f"{path} is a folder: name a split, one of {SPLITS}")
        if (path / f"{split}_sent_emo.csv").is_file():
            return read_meld(path, split)
        if (path / f"{split}.csv").is_file():
            return read_user_csv(path / f"{split}.csv", None, labels)
        raise ManifestError(
            f"{path}: no {split}_sent_emo.csv (MELD layout) or {split}.csv (your own data) in this folder"
        )
    if not path.is_file():
        raise ManifestError(f"{path}: no such file or folder")
    return read_user_csv(path, split, labels)


def read_meld(folder: Path, split: str) -> list[Utterance]:
    csv_path = folder / f"{split}_sent_emo.csv"
    rows = read_csv(csv_path, MELD_COLUMNS)
    if not rows:
        raise ManifestError(f"{csv_path}: no rows under the header; the {split} split needs at least one utterance")
    check_labels(csv_path, rows, "Emotion", "Sentiment")
    clips = folder / MELD_CLIP_DIRS[split]
    utterances = [
        Utterance(
            text=repair_text(row["Utterance"]),
            emotion=row["Emotion"].strip().lower(),
            sentiment=row["Sentiment"].strip().lower(),
            path=clips / f"dia{row['Dialogue_ID'].strip()}_utt{row['Utterance_ID'].strip()}.mp4",
            source=f"{csv_path}:{line}",
            speaker=repair_text(row.get("Speaker", "")) or None,
        )
        for line, row in rows
    ]
    order = [parse_number(csv_path, line, row["Utterance_ID"], "Utterance_ID") for line, row in rows]
    return with_history(utterances, [row["Dialogue_ID"].strip() for _, row in rows], order)


def read_user_csv(csv_path: Path, split: str | None, labels: bool = True) -> list[Utterance]:
    rows = read_csv(csv_path, USER_COLUMNS if labels else USER_COLUMNS[:2])
    if not rows:
        raise ManifestError(f"{csv_path}: no rows under the header; add at least one utterance")
    if split is not None:
        if not rows or "split" not in rows[0][1]:
            raise ManifestError(
                f"{csv_path}: no 'split' column, so the {split!r} rows cannot be told apart. Add a column "
                f"'split' with values {SPLITS}, or put the splits in train.csv / dev.csv / test.csv in one folder"
            )
        found = sorted({row["split"].strip().lower() for _, row in rows})
        rows = [(line, row) for line, row in rows if row["split"].strip().lower() == split]
        if not rows:
            raise ManifestError(f"{csv_path}: no rows with split {split!r} (split values found: {found}); "
                                f"use {', '.join(SPLITS)}")
    if labels:
        check_labels(csv_path, rows, "emotion", "sentiment")
    else:  # an unlabelled row has neither label; a given one must be known (a typo is an error)
        check_labels(csv_path, [(line, row) for line, row in rows if label_of(row, "emotion") or label_of(row, "sentiment")],
                     "emotion", "sentiment")
    out = []
    for line, row in rows:
        start, end = (parse_seconds(csv_path, line, row.get(col)) for col in ("start", "end"))
        media = row["path"].strip()
        out.append(
            Utterance(
                text=repair_text(row["text"]),
                emotion=label_of(row, "emotion") or None,
                sentiment=label_of(row, "sentiment") or None,
                path=(csv_path.parent / media) if media else None,
                start=start,
                end=end,
                source=f"{csv_path}:{line}",
                speaker=repair_text(row.get("speaker", "")) or None,
            )
        )
    if "dialogue" not in rows[0][1]:
        return out
    order = [parse_number(csv_path, line, row["order"], "order") if row.get("order", "").strip() else 0.0 for line, row in rows]
    return with_history(out, [row["dialogue"].strip() or None for _, row in rows], order)


def label_of(row: dict[str, str], column: str) -> str:
    return row.get(column, "").strip().lower()


def parse_number(csv_path: Path, line: int, value: str, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # a NaN would sort anywhere
        raise ManifestError(f"{csv_path}:{line}: {column} must be a finite number (the utterance's place in its dialogue), "
                            f"got {value!r}")
    return number


def repair_text(text: str) -> str:
    """Mojibake and cp1252 punctuation stored as C1 controls (pre-2020 MELD) -> proper Unicode.
    Curly quotes stay curly: the current MELD files have them."""
    return ftfy.fix_text(text, uncurl_quotes=False).strip()


def read_csv(csv_path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the header is line 1. Clear errors for empty, non-CSV or
    column-less files."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = csv_path.read_bytes().decode("cp1252", errors="replace")  # legacy exports; ftfy repairs the rest
    if not text.strip():
        raise ManifestError(f"{csv_path}: the file is empty; expected a CSV with columns {', '.join(required)}")
    # StringIO, not str.splitlines: pre-2020 MELD's U+0085 (a cp1252 ellipsis) is a line break to splitlines.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; found {header[:10]}. "
            f"Expected a CSV with columns {', '.join(required)}"
        )
    reader.fieldnames = header
    rows = []
    for row in reader:
        if None in row:  # more fields than the header: not this CSV layout
            raise ManifestError(f"{csv_path}:{reader.line_num}: more fields than the header's {len(header)}")
        rows.append((reader.line_num, {k: (v or "") for k, v in row.items()}))
    return rows


def check_labels(csv_path: Path, rows: list[tuple[int, dict[str, str]]], emotion_col: str, sentiment_col: str) -> None:
    for col, allowed in ((emotion_col, EMOTIONS), (sentiment_col, SENTIMENTS)):
        bad = [(line, row.get(col, "")) for line, row in rows if row.get(col, "").strip().lower() not in allowed]
        if bad:
            shown = ", ".join(f"line {line}: {value!r}" for line, value in bad[:MAX_REPORTED_ROWS])
            more = f" and {len(bad) - MAX_REPORTED_ROWS} more" if len(bad) > MAX_REPORTED_ROWS else ""
            raise ManifestError(
                f"{csv_path}: unknown {col} label in {len(bad)} row(s) ({shown}{more}); "
                f"allowed (case-insensitive): {', '.join(allowed)}"
            )


def parse_seconds(csv_path: Path, line: int, value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ManifestError(f"{csv_path}:{line}: start/end must be seconds (e.g. 12.5), got {value!r}") from None
    if not math.isfinite(seconds):  # float() reads "nan", "inf", "1e999"
        raise ManifestError(f"{csv_path}:{line}: start/end must be a finite number of seconds (e.g. 12.5), got {value!r}")
    if seconds < 0:
        raise ManifestError(f"{csv_path}:{line}: start/end must be >= 0, got {value!r}")
    return seconds

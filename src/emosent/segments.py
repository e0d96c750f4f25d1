"""Where the utterances of a video are: subtitles (SRT, WebVTT), a transcript JSON, or speech
recognition (faster-whisper, an optional extra)."""

from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import srt
import webvtt
from pydantic import BaseModel, ConfigDict, Field
from webvtt.errors import MalformedCaptionError, MalformedFileError

from emosent.config import validated

ASR_HINT = "install the optional extra with: pip install 'emosent[asr]'"


class SegmentsError(ValueError):
    """Segments that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str
    speaker: str | None = None  # from a transcript that names speakers


def read_segments(path: str | Path, warnings: list[str] | None = None) -> list[Segment]:
    """Segments from a .srt, .vtt or .json (`[{"start": s, "end": s, "text": "..."}]`) file."""
    path = Path(path)
    if not path.is_file():
        raise SegmentsError(f"{path}: file not found")
    text = decode_text(path, warnings if warnings is not None else [])
    suffix = path.suffix.lower()
    if suffix == ".srt":
        return parse_srt(path, text)
    if suffix == ".vtt":
        return parse_vtt(path, text)
    if suffix == ".json":
        return parse_transcript(path, text)
    raise SegmentsError(f"{path}: unknown subtitle format {suffix!r}; use .srt, .vtt or a transcript .json")


def decode_text(path: Path, warnings: list[str]) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; legacy Windows-1252 files are read as
    such with a warning. Binary files are refused."""
    data = path.read_bytes()
    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SegmentsError(f"{path}: binary data, not a subtitle or transcript text file")
    for encoding in ("utf-8-sig", "utf-16"):
        try:
            if encoding == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
                continue
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    warnings.append(f"{path}: not UTF-8; read as Windows-1252 (save it as UTF-8 to be sure of accents)")
    return data.decode("cp1252", errors="replace")


def parse_srt(path: Path, text: str) -> list[Segment]:
    try:
        cues = list(srt.parse(text))
    except srt.SRTParseError as err:
        line = text.count("\n", 0, err.expected_start) + 1  # where the unmatched content begins
        raise SegmentsError(f"{path}: not a valid SRT file at line {line} ({err}); expected numbered cues with "
                            "'HH:MM:SS,mmm --> HH:MM:SS,mmm' lines") from None
    if not cues:
        raise SegmentsError(f"{path}: no subtitle cues found")
    return [Segment(c.start.total_seconds(), c.end.total_seconds(), clean(html.unescape(strip_tags(c.content)))) for c in cues]


def parse_vtt(path: Path, text: str) -> list[Segment]:
    try:
        captions = webvtt.from_string(text).captions
    except (MalformedFileError, MalformedCaptionError) as err:
        raise SegmentsError(f"{path}: not a valid WebVTT file ({err}); it must start with 'WEBVTT' and have "
                            "'HH:MM:SS.mmm --> HH:MM:SS.mmm' cues") from None
    if not captions:
        raise SegmentsError(f"{path}: no captions found")
    # start_in_seconds would drop the milliseconds: the Timestamp objects keep them. Caption.text
    # has the cue tags removed but keeps WebVTT's character references (&amp;, &lt;): decode them.
    return [Segment(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000, clean(html.unescape(c.text)))
            for c in captions]


def strip_tags(text: str) -> str:
    """SRT styling (<i>, <font color=...>, {\\an8}) is not speech; entities (&amp;) are decoded after."""
    return re.sub(r"</?[A-Za-z][^>]*>|\{\\[^}]*\}", "", text)


class TranscriptItem(BaseModel):
    """One utterance of a transcript JSON: times in seconds (finite, >= 0; JSON true is not a
    number), the text as a string, and optionally who speaks (used with dialogue context). Other
    keys (a confidence) are allowed and ignored."""

    model_config = ConfigDict(strict=True)
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    end: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    text: str
    speaker: str | None = None


TRANSCRIPT_SHAPE = '[{"start": seconds, "end": seconds, "text": "..."}, ...]'


def parse_transcript(path: Path, text: str) -> list[Segment]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise SegmentsError(f"{path}: not valid JSON ({err}); expected {TRANSCRIPT_SHAPE}") from None
    if not isinstance(items, list):
        raise SegmentsError(f"{path}: expected a JSON list {TRANSCRIPT_SHAPE}, got a {type(items).__name__}")
    if not items:
        raise SegmentsError(f"{path}: the transcript is empty")
    try:
        parsed = validated(list[TranscriptItem], items, path)
    except ValueError as err:  # "path: 3.start: Input should be ..., got nan": say it is item 3
        raise SegmentsError(f"{err}; expected {TRANSCRIPT_SHAPE}") from None
    return [Segment(item.start, item.end, clean(item.text), clean(item.speaker or "") or None) for item in parsed]


def transcribe(video: str | Path, model_size: str = "small", device: str = "auto") -> list[Segment]:
    """Speech recognition with faster-whisper (optional extra). It decodes the audio with PyAV
    itself: nothing is cut or written."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise SegmentsError(f"--asr needs faster-whisper, which is not installed: {ASR_HINT}; "
                            "or pass --subtitles / --transcript") from None
    try:
        model = WhisperModel(model_size, device=device)
    except Exception as err:  # huggingface_hub raises several kinds when offline
        raise SegmentsError(f"could not load the faster-whisper model {model_size!r} ({err.__class__.__name__}): it is "
                            "downloaded on first use and needs internet once; or pass --subtitles / --transcript") from None
    pieces, _ = model.transcribe(str(video))
    return [Segment(p.start, p.end, clean(p.text)) for p in pieces]


def clean(text: str) -> str:
    """One line, single spaces, no invisible format characters (a cue of only U+200B is empty)."""
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())

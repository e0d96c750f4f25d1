"""Predict over a whole dataset: `emosent predict --data MANIFEST_OR_FOLDER --out PREDICTIONS.jsonl`.

The input is a manifest (MELD layout or a user's CSV, labels optional) or a folder of videos,
each cut into utterances by the subtitles beside it (same stem, .srt or .vtt) or, without them,
by speech recognition. Every utterance becomes one output row, in input order: a prediction, or
the reason it was skipped.

The rows are cut into shards of `shard_rows`. Each shard is predicted on its own (its batches
never cross a shard boundary, so a row's numbers do not depend on which process or which run
computed it) and committed atomically as `OUT.parts/shard-NNNNN.jsonl`. Killed at any point and
run again with the same arguments, only the missing shards are predicted; the output file is
assembled from the shards in order, atomically, once all are there, and the parts folder is
removed. Prediction is a Lightning predict loop: under `--devices N --strategy ddp`, torchrun or
SLURM each rank takes every N-th pending shard (the list is broadcast from rank 0), so no row is
lost or predicted twice. The loop is `emosent.sharded`'s, which feature extraction runs too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import Dataset

from emosent.builtin import load_model
from emosent.encoders import weights_digest
from emosent.config import BATCH
from emosent.data import MediaError, SkipCounter, Utterance, probe, read_manifest
from emosent.data.manifest import SPLITS
from emosent.files import exclusive, write_atomically
from emosent.model import EmotionSentimentModel
from emosent.records import Recorder, utterance_row
from emosent.runtime import log, rank_zero_exclusive
from emosent.segments import (PACKAGED_ASR_MODEL, Segment, SegmentsError, SpokenLanguage, Transcription, check_segments,
                              read_segments, subtitles_beside, text_language_note, transcribe, whisper_language)
from emosent.sharded import ShardData, Shards, ShardWriter, file_stamp, open_shards, run_shards
from emosent.speakers import diarise as diarise_segments

FORMAT_VERSION = 4  # bump when a row's fields or their meaning change: older parts are then refused
SHARD_ROWS = 64
OUTPUT_SUFFIXES = (".jsonl", ".parquet")
PARQUET_HINT = "pip install pyarrow==26.0.1 (or: pip install 'emosent[parquet]')"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
# recordings without video (calls, interviews): the built-in model's face expert abstains on them;
# a model that reads frames skips their rows ("no video stream")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".opus", ".aac")
LOCK_FILE = "lock"


@dataclass(frozen=True)
class Row:
    """One output row to be: the utterance, and the reason it is skipped when that is known
    before reading any media (a segment outside its video, a video that cannot be opened)."""

    utterance: Utterance
    file: str
    skip: str | None = None
    error: str | None = None
    language: SpokenLanguage | None = None  # of its video's speech, where known (see `emosent.segments`)


# --- the rows -------------------------------------------------------------------------------


def list_rows(data: Path, split: str | None, needs_text: bool, asr_model: str, asr_dir: Path,
              language: str | None = None, diarise: bool = True) -> list[Row]:
    """Every utterance of `data`, in order: a manifest's rows, or each video's segments (with
    `diarise`, the segments that name no speaker get S1, S2, ... per video, as in analyze)."""
    if not data.exists():
        raise ValueError(f"--data {data}: no such file or folder")
    if data.is_file() or is_manifest_folder(data):
        splits = [split] if split is not None or data.is_file() else [s for s in SPLITS if has_split(data, s)]
        return [Row(u, str(u.path) if u.path is not None else "") for s in splits
                for u in read_manifest(data, s, labels=False)]
    if split is not None:
        raise ValueError(f"--split {split}: {data} is a folder of videos, not a manifest with splits")
    suffixes = VIDEO_SUFFIXES + AUDIO_SUFFIXES
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise ValueError(f"--data {data}: no manifest (train.csv, *_sent_emo.csv) and no video or audio files "
                         f"({', '.join(suffixes)}) in this folder")
    return [row for file in files for row in video_rows(file, needs_text, asr_model, asr_dir, language, diarise)]


def is_manifest_folder(folder: Path) -> bool:
    return any(has_split(folder, s) for s in SPLITS)


def has_split(folder: Path, split: str) -> bool:
    return (folder / f"{split}_sent_emo.csv").is_file() or (folder / f"{split}.csv").is_file()


def video_rows(video: Path, needs_text: bool, asr_model: str, asr_dir: Path, language: str | None = None,
               diarise: bool = True) -> list[Row]:
    """A video's segments as rows, in time order: the ones `analyze` would skip (outside the
    video, no text) are rows with their reason; a video that cannot be opened is one row."""
    try:
        info = probe(video)
    except MediaError as err:
        return [Row(Utterance("", None, None, video, source=str(video)), str(video), err.reason, str(err))]
    subtitles = subtitles_beside(video)
    warnings: list[str] = []
    try:
        if subtitles:  # the language of subtitles is what --language says, or unknown
            segments, spoken = read_segments(subtitles, warnings), SpokenLanguage.given(language)
        else:
            segments, spoken = transcribed(video, asr_model, asr_dir, language)
    except SegmentsError as err:
        if subtitles is None:  # speech recognition is missing: no video would get segments
            raise
        return [Row(Utterance("", None, None, video, source=str(subtitles)), str(video), "unreadable subtitles", str(err))]
    kept, skipped = check_segments(segments, info.duration_s, needs_text, warnings)
    if diarise:
        kept = diarise_segments(video, kept, None, warnings)
    where = subtitles or video
    rows = [(s.start, s.end, Row(Utterance(s.text, None, None, video, s.start, s.end, f"{where} {s.start:.3f}-{s.end:.3f} s",
                                           s.speaker, tuple((p.speaker, p.text) for p in kept[:i])), str(video), language=spoken))
            for i, s in enumerate(kept)]
    rows += [(s["start_time"], s["end_time"],
              Row(Utterance(s["text"], None, None, video, s["start_time"], s["end_time"], f"{where}", s["speaker"]), str(video), s["reason"],
                  f"{where}: segment {s['start_time']:.3f}-{s['end_time']:.3f} s: {s['reason']}")) for s in skipped]
    return [row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))]


def transcribed(video: Path, asr_model: str, asr_dir: Path, language: str | None = None) -> Transcription:
    """Speech recognition of a video without subtitles, once: kept in the parts folder (a lock per
    video, so DDP ranks and a resumed run reuse it rather than transcribe again). `language`: a
    Whisper code to force, None to detect."""

    stat = video.stat()
    key = hashlib.sha256(json.dumps([os.path.realpath(video), stat.st_size, stat.st_mtime_ns, asr_model]
                                + ([language] if language else [])).encode()).hexdigest()[:24]
    path = asr_dir / f"{key}.json"
    with exclusive(asr_dir / f"{key}.lock", wait=True, holder=str(path)):
        if not path.is_file():
            try:
                heard = transcribe(video, asr_model, language=language)
            except SegmentsError as err:
                raise SegmentsError(f"{video}: no subtitles beside it ({video.stem}.srt or .vtt) and {err}") from None
            items = {"segments": [{"start": s.start, "end": s.end, "text": s.text, "speaker": s.speaker} for s in heard.segments],
                     "language": heard.language.to_dict() if heard.language else None}
            write_atomically(path, lambda tmp: tmp.write_text(json.dumps(items)))
        items = json.loads(path.read_text())
    if isinstance(items, list):  # kept by an earlier version, before the language was: not known
        items = {"segments": items, "language": None}
    return Transcription([Segment(i["start"], i["end"], i["text"], i.get("speaker"), "asr") for i in items["segments"]],
                         SpokenLanguage.from_dict(items["language"]) if items["language"] else None)


# --- what a run is, and where it stands -----------------------------------------------------


def fingerprint(model: EmotionSentimentModel, rows: list[Row], shard_rows: int) -> str:
    """What the output depends on: the model (config, preprocessing, every weight), the rows
    (text, media file with its size and mtime, time range, history) and the shard size."""
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "config": model.config.to_dict(), "shard_rows": shard_rows,
                                   "processor": model.processor.fingerprint()}, sort_keys=True).encode())
    h.update(weights_digest([model]).encode())
    for row in rows:
        u = row.utterance
        h.update(json.dumps([u.text, row.file, u.start, u.end, u.history, u.source, row.skip, file_stamp(u.path)]
                            + ([row.language.code] if row.language else [])).encode())
    return h.hexdigest()


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def check_out(out: Path, data: Path, model_dir: Path | None) -> None:
    """Before any work: --out must be a new .jsonl or .parquet in an existing folder, and never an input."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {out}: name a JSON Lines file ending in .jsonl, or a Parquet file ending in .parquet")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ValueError(f"--out {out}: writing Parquet needs pyarrow: {PARQUET_HINT}; or write --out PREDICTIONS.jsonl") from None
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; name a .jsonl or .parquet file to write")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first or choose another path")
    for name, source in (("model folder", model_dir), ("data", data)):
        if source is not None and source.exists() and (source.is_file() and out.exists() and out.samefile(source)
                                                       or source.is_dir() and out.resolve() == source.resolve()):
            raise ValueError(f"--out {out}: that is the {name} being read; choose another file")
    if out.exists() and not parts_dir(out).is_dir():
        raise ValueError(f"--out {out}: already exists; emosent predict never overwrites a file: choose another path "
                         "or remove it")


# --- the Lightning loop ---------------------------------------------------------------------


class RowDataset(Dataset):
    """Row i -> the processor's item, or the skip already known for it."""

    def __init__(self, rows: list[Row], processor):
        self.rows, self.processor = rows, processor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        if row.skip is not None:
            return {"index": i, "skip": row.skip, "error": row.error}
        return self.processor(row.utterance, i)


class Predictor(L.LightningModule):
    """predict_step: a batch -> the model's output and its encoders' features (see `emosent.records`)."""

    def __init__(self, model: EmotionSentimentModel, text_absent: frozenset[int] = frozenset()):
        super().__init__()
        self.model, self.text_absent = model, text_absent  # rows where a late fusion's text expert abstains

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {"index": batch["index"].tolist(), "skipped": batch["skipped"]}
        if batch["index"].numel():  # as analyze runs a batch: the encoders, then the heads on their features
            features = self.model.encode(batch)
            masks = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
            if self.text_absent:
                masks["text_present"] = torch.tensor([i not in self.text_absent for i in out["index"]], device=self.device)
            out.update(output=self.model(**features, **masks), features=features)
        return out


class JsonlShardWriter(ShardWriter):
    """A shard of rows (`emosent.records.utterance_row`) as JSON Lines, in row order."""

    def __init__(self, shards: Shards, rows: list[Row], recorder: Recorder):
        super().__init__(shards, "predict")
        self.rows, self.recorder = rows, recorder

    def batch_rows(self, prediction: dict):
        if prediction["index"]:
            sources = [self.rows[i].utterance.source for i in prediction["index"]]
            for i, record in zip(prediction["index"], self.recorder(prediction["output"], sources, prediction["features"])):
                yield i, utterance_row(self.rows[i].utterance, self.rows[i].file, record)
        for i, reason, error in prediction["skipped"]:
            yield i, utterance_row(self.rows[i].utterance, self.rows[i].file, self.recorder.blank(), reason, error)

    def save(self, k: int, rows: list, path: Path) -> None:
        path.write_text("".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows), encoding="utf-8")


# --- the public function --------------------------------------------------------------------


@dataclass
class PredictResult:
    out: Path
    rows: int
    skipped: SkipCounter
    shards_done_before: int
    elapsed_s: float


def predict(
    data: str | Path,
    out: str | Path,
    model: EmotionSentimentModel | str | Path | None = None,
    *,
    split: str | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    shard_rows: int = SHARD_ROWS,
    asr_model: str = PACKAGED_ASR_MODEL,
    language: str | None = None,
    text_for_other_languages: bool = False,
    diarise: bool = True,
    trainer_kwargs: dict | None = None,
) -> PredictResult | None:
    """Predict every utterance of `data` into the JSON Lines file `out` (see the module's doc) with
    `model`: a model folder, a loaded model, or None for the built-in one. `language`: the Whisper
    code speech recognition uses for videos without subtitles (and the language of subtitles), None
    or "auto" to detect it per video; as in `analyze`, a late fusion's text expert abstains on the
    rows of a video whose language is not English, unless `text_for_other_languages`. `diarise`:
    a video's segments that name no speaker get one from their voices (see `emosent.speakers`).
    Returns the result on global rank 0, None on the other ranks."""
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    model_dir = None if model is None or isinstance(model, torch.nn.Module) else Path(model)
    if (problem := BATCH.problem(batch_size)) is not None:
        raise ValueError(f"--batch-size {problem}")
    if shard_rows < 1:
        raise ValueError(f"--shard-rows must be at least 1, got {shard_rows}")
    check_out(out, data, model_dir)
    language = whisper_language(language)
    shards_dir = parts_dir(out)
    net = model if isinstance(model, torch.nn.Module) else load_model(model_dir)  # None: the built-in model
    existed = shards_dir.exists()
    try:
        rows = list_rows(data, split, "text" in net.modalities, asr_model, shards_dir / "asr", language, diarise)
    except BaseException:
        if not existed and rank_zero_only.rank == 0:  # the transcripts' folder this run began: nothing of a failed start is left
            shutil.rmtree(shards_dir, ignore_errors=True)
        raise
    text_absent = other_languages(net, rows, text_for_other_languages)
    shards = Shards(len(rows), shard_rows, shards_dir, ".jsonl")
    key = fingerprint(net, rows, shard_rows)
    with rank_zero_exclusive(shards_dir / LOCK_FILE, wait=False, holder=f"--out {out}"):
        if rank_zero_only.rank == 0:
            open_shards(shards, format_version=FORMAT_VERSION, fingerprint=key,
                        mismatch=f"--out {out}: {shards_dir} holds a run with other data, model or --shard-rows; re-run "
                                 "with that run's arguments to finish it, or remove the folder to start anew")
            for stale in out.parent.glob(f".{out.name}.*.tmp"):  # an output whose commit a kill interrupted
                stale.unlink(missing_ok=True)
        pending = shards.pending()
        done_before = shards.count - len(pending)
        if pending:
            log(f"predicting {len(rows)} rows of {data} in {shards.count} shards of {shard_rows}"
                + (f" ({done_before} shards already done, kept in {shards_dir})" if done_before else ""))
            trainer = run_loop(net, rows, shards, pending, batch_size, num_workers, trainer_kwargs or {}, text_absent)
            if trainer.global_rank != 0:
                return None
        elif rank_zero_only.rank != 0:
            return None
        missing = shards.pending()
        if missing:  # a rank that failed without raising here: never assemble a partial output
            raise RuntimeError(f"{len(missing)} shards missing in {shards_dir} after prediction; run the same command again")
        parts = [shards.file(k) for k in range(shards.count)]
        if not out.exists():
            write_atomically(out, lambda tmp: write_output(parts, tmp, parquet=out.suffix.lower() == ".parquet"))
        elif not same_rows(out, parts):  # not the output this run assembled before it was stopped
            raise ValueError(f"--out {out}: a file appeared there that is not this run's output; move it away and run "
                             f"the same command again to assemble {shards_dir}")
        skipped = count_skips(out)
        shutil.rmtree(shards_dir)  # ours alone: meta, shards, transcripts, the lock we hold
    log(f"{len(rows)} rows -> {out}; {skipped.summary('rows')}")
    if skipped.seen and skipped.skipped == skipped.seen:  # nothing predicted is a failure, not an empty success
        raise ValueError(f"{out}: 0 of {skipped.seen} rows predicted, {skipped.summary('rows')}; each row's reason is in {out}")
    return PredictResult(out, len(rows), skipped, done_before, time.perf_counter() - started)


def other_languages(net, rows: list[Row], anyway: bool) -> frozenset[int]:
    """The rows whose video's speech is known not to be English, where a late fusion's text expert
    abstains (`emosent.segments.text_language_note`, as in analyze); said once per video."""
    videos = {row.file: row.language for row in rows if row.language is not None}
    absent = set()
    for file, spoken in videos.items():
        note, reads = text_language_note(net, spoken, anyway, "this video's rows")
        if note:
            log(f"warning: {file}: {note}")
        if not reads:
            absent.add(file)
    return frozenset(i for i, row in enumerate(rows) if row.file in absent)


def run_loop(net, rows, shards: Shards, pending, batch_size, num_workers, trainer_kwargs,
             text_absent: frozenset[int] = frozenset()) -> L.Trainer:
    data = ShardData(RowDataset(rows, net.processor), shards, pending, net.processor.collate, batch_size, num_workers)
    return run_shards(Predictor(net.eval(), text_absent), data, JsonlShardWriter(shards, rows, Recorder.of(net)), trainer_kwargs)


def write_output(parts: list[Path], target: Path, *, parquet: bool) -> None:
    """The shards' rows in order: their JSON Lines concatenated, or one Parquet table (see `table`)."""
    if parquet:
        import pyarrow.parquet as pq

        pq.write_table(table(parts), target)
        return
    with open(target, "wb") as f:
        for path in parts:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, f)


def table(parts: list[Path]):
    """The shards' rows as one pyarrow table: a column per field any row has (labels only some rows
    carry are null in the others), the probabilities and experts as struct columns, the top 3 as
    lists of structs."""
    import pyarrow as pa

    rows = [row for part in parts for row in read_predictions(part)]
    names = dict.fromkeys(name for row in rows for name in row)  # pyarrow's from_pylist keeps the first row's only
    return pa.table({name: [row.get(name) for row in rows] for name in names})


def same_rows(path: Path, parts: list[Path]) -> bool:
    """Whether `path` holds exactly the shards' rows (an output assembled before a stop)."""
    if path.suffix.lower() == ".parquet":
        return read_predictions(path) == table(parts).to_pylist()
    if path.stat().st_size != sum(p.stat().st_size for p in parts):
        return False
    with open(path, "rb") as f:
        return all(f.read(p.stat().st_size) == p.read_bytes() for p in parts)


def count_skips(out: Path) -> SkipCounter:
    counter = SkipCounter()
    for row in read_predictions(out):
        counter.seen += 1
        if row["skip"] is not None:
            counter.reasons[row["skip"]] += 1
            if len(counter.first_errors) < 3:
                counter.first_errors.append(row["error"])
    return counter


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions file (.jsonl or .parquet), in order."""
    if Path(path).suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]

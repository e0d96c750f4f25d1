"""Run the frozen encoders once and keep their outputs.

In the design the text transformer, the R3D-18 backbone and the audio convolutions never change,
so their outputs are a pure function of (frozen weights, preprocessing settings, the manifest's
rows); where part of an encoder trains, so are the outputs of its frozen part (the text
transformer's hidden states below its trained layers; the log-mel when the audio convolutions
train). Those outputs are stored per split as safetensors shards in a folder named by a
fingerprint of exactly those things; a matching fingerprint reuses the shards, anything else
extracts anew. Extraction is a Lightning predict loop, so it batches on a GPU when there is one
and runs under the same multi-device launcher as training, each rank writing its own shards.
Finished shards survive an interruption and are not redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Subset

from emosent.data import SkipCounter, Utterance, UtteranceDataset
from emosent.encoders import weights_digest
from emosent.files import default_cache_dir
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.model import EmotionSentimentModel
from emosent.runtime import log, rank_zero_exclusive
from emosent.signals import raise_if_interrupted

FORMAT_VERSION = 4  # bump when the stored layout or the preprocessing code changes meaning
SHARD_ROWS = 256
META_FILE = "meta.json"
# Outputs stored per row with their own length (concatenated, with a "<name>.lengths" tensor):
# the text encoder's boundary hidden states (L, H) when its top layers train, and their token types (L,).
SEQUENCES = ("text_features", "token_type_ids")


def is_sequence(name: str, row: torch.Tensor) -> bool:
    return name == "token_type_ids" or (name in SEQUENCES and row.dim() == 2)


def fingerprint(model: EmotionSentimentModel, records: list[Utterance], weights: str | None = None) -> str:
    """Everything that changes the frozen outputs: the processor's settings (and tokenizer), the
    frozen weights' digest, pooling, and the rows (text, media file with its size and mtime, time
    range). `weights`: `weights_digest(model.feature_modules())` when the caller has it already."""
    c = model.config
    spec = {
        "format": FORMAT_VERSION,
        "processor": model.processor.fingerprint(),
        "pooling": c.pooling if "text" in c.modalities else None,
        # the frozen audio output: convolutions pooled all or masked, or the log-mel when they train
        **({"audio": [c.audio_encoder, c.audio_pooling, c.train_audio_conv]} if "audio" in c.modalities else {}),
        "weights": weights or weights_digest(model.feature_modules()),
    }
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    media = {"video", "audio"} & set(c.modalities)
    for r in records:
        row = [model.processor.text_input(r) if "text" in c.modalities else None]
        if media:
            stat = r.path.stat() if r.path is not None and r.path.is_file() else None
            # resolved: `--data meld` and `--data /abs/meld` are the same rows
            row += [str(r.path.resolve()) if r.path else None, r.start, r.end, stat and [stat.st_size, stat.st_mtime_ns]]
        h.update(json.dumps(row).encode())
    return h.hexdigest()


@dataclass
class Features:
    """The frozen outputs of the rows that could be read, with their labels.
    tensors: text_features (N, H) (or N tensors (L_i, H) when the top text layers train, with
    token_type_ids likewise when there is context), video_features (N, 512), audio_features (N, 128) (or the
    log-mel (N, 1, M, F) when the audio convolutions train) with audio_lengths (N,), emotion (N,),
    sentiment (N,), index (N,) = row numbers in the manifest."""

    tensors: dict[str, torch.Tensor]
    skipped: SkipCounter
    directory: Path
    reused: bool

    def __len__(self) -> int:
        return len(self.tensors["index"])


class FeatureDataset(torch.utils.data.Dataset):
    """Rows of `Features`; batch them with `collate_features`."""

    def __init__(self, features: Features):
        self.tensors = features.tensors

    def __len__(self) -> int:
        return len(self.tensors["index"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def collate_features(items: list[dict]) -> dict[str, torch.Tensor]:
    """Cached rows -> a batch. Fixed-width features are stacked; sequences (the text encoder's
    boundary states (L, H) and token types (L,) when its top layers train) are right-padded, as
    the tokenizer pads, with the attention_mask that marks their tokens."""
    batch = {}
    for name in items[0]:
        rows = [it[name] for it in items]
        if is_sequence(name, rows[0]):
            batch[name] = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        else:
            batch[name] = torch.stack(rows)
    if "text_features" in batch and batch["text_features"].dim() == 3:
        lengths = torch.tensor([len(it["text_features"]) for it in items])
        batch["attention_mask"] = (torch.arange(batch["text_features"].shape[1]) < lengths[:, None]).long()
    return batch


def extract_features(
    model: EmotionSentimentModel,
    records: list[Utterance],
    split: str,
    cache_dir: Path | None = None,
    *,
    batch_size: int = 16,
    num_workers: int = 2,
    shard_rows: int = SHARD_ROWS,
    trainer_kwargs: dict | None = None,
    weights: str | None = None,
) -> Features:
    """Frozen outputs of `records`, from the cache when the fingerprint matches, else extracted.
    `weights`: the frozen weights' digest when the caller has it already (see `fingerprint`)."""
    if not records:
        raise ValueError(f"the {split} split has no rows")
    key = fingerprint(model, records, weights)
    shards = Shards(len(records), shard_rows)
    directory = (cache_dir or default_cache_dir()) / "features" / f"{split}-{key[:20]}-{shard_rows}"
    # One extraction per feature set: a second process sharing the cache waits here, then finds
    # the shards done. Only global rank 0 locks: DDP ranks of one job share its pending list.
    lock = directory.with_name(directory.name + ".lock")
    with rank_zero_exclusive(lock, wait=True, holder=str(lock)):
        pending = [k for k in range(shards.count) if not shards.path(directory, k).is_file()]
        if pending:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("*.tmp"):  # a shard being written when a process was killed
                stale.unlink(missing_ok=True)
            (directory / META_FILE).write_text(json.dumps({"fingerprint": key, "rows": len(records), "shard_rows": shard_rows,
                                                           "config": model.config.to_dict(),
                                                           "processor_config": model.processor.config.to_dict()}, indent=2))
            done = shards.count - len(pending)
            log(f"extracting frozen features of {len(records)} {split} rows into {directory}"
                + (f" ({done} of {shards.count} shards already done)" if done else ""))
            run_extraction(model, records, directory, shards, pending, batch_size, num_workers, trainer_kwargs or {})
        else:
            log(f"reusing cached {split} features from {directory} (fingerprint matches: nothing to extract)")
    features = load_shards(directory, shards, records, reused=not pending)
    log(f"{split}: {len(features)} rows with features; {features.skipped.summary('rows')}")
    if len(features) and hasattr(model, "video") and hasattr(model.video, "face"):
        share = features.tensors["video_features"][:, -1]  # the share of a clip's frames with a face
        log(f"{split}: a face in {100 * share.mean():.1f}% of the sampled frames; {int((share == 0).sum())} of "
            f"{len(share)} clips without any face (they get the video encoder's learned no-face input)")
    return features


@dataclass(frozen=True)
class Shards:
    """Rows 0..total-1 cut into consecutive shards of `size` rows."""

    total: int
    size: int

    @property
    def count(self) -> int:
        return (self.total + self.size - 1) // self.size

    def rows(self, k: int) -> range:
        return range(k * self.size, min((k + 1) * self.size, self.total))

    def path(self, directory: Path, k: int) -> Path:
        return directory / f"shard-{k:05d}.safetensors"


class FrozenEncoders(L.LightningModule):
    """predict_step: a batch of raw inputs -> the frozen parts' outputs."""

    def __init__(self, model: EmotionSentimentModel):
        super().__init__()
        self.model = model

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {"index": batch["index"], "skipped": batch["skipped"]}
        if batch["index"].numel():
            out.update({k: (v.float() if v.is_floating_point() else v).cpu() for k, v in self.model.encode(batch).items()})
            if out.get("text_features") is not None and out["text_features"].dim() == 3:  # (B, L, H): per row, unpadded
                lengths = batch["attention_mask"].sum(1).tolist()
                out["text_features"] = [f[:n] for f, n in zip(out["text_features"], lengths)]
                if "token_type_ids" in batch:
                    out["token_type_ids"] = [t[:n].cpu() for t, n in zip(batch["token_type_ids"], lengths)]
        return out


class ExtractionData(L.LightningDataModule):
    """Each rank reads the rows of every world_size-th pending shard, in order."""

    def __init__(self, dataset: UtteranceDataset, shards: Shards, pending: list[int], collate, batch_size: int, num_workers: int):
        super().__init__()
        self.dataset, self.shards, self.pending, self.collate = dataset, shards, pending, collate
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        mine = self.pending[self.trainer.global_rank :: self.trainer.world_size]
        rows = [i for k in mine for i in self.shards.rows(k)]
        if not rows:  # more ranks than pending shards: one empty batch, since DDP forbids an empty loader
            return DataLoader([[]], batch_size=None, collate_fn=self.collate)
        return DataLoader(Subset(self.dataset, rows), batch_size=self.batch_size, collate_fn=self.collate,
                          num_workers=self.num_workers)


class ShardWriter(BasePredictionWriter):
    """Gathers predicted rows into shards; a shard is written (atomically) once all its rows are in."""

    def __init__(self, directory: Path, shards: Shards):
        super().__init__(write_interval="batch")
        self.directory, self.shards = directory, shards
        self.open: dict[int, dict] = {}

    def buffer(self, row: int) -> tuple[dict, int]:
        k = row // self.shards.size
        if k not in self.open:
            self.open[k] = {"n": 0, "rows": {}, "skipped": []}
        return self.open[k], row % self.shards.size

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        raise_if_interrupted()
        names = [k for k in prediction if k not in ("index", "skipped")]
        for j, row in enumerate(prediction["index"].tolist()):
            buf, r = self.buffer(row)
            buf["rows"][r] = {name: prediction[name][j] for name in names}
            buf["n"] += 1
        for row, reason, error in prediction["skipped"]:
            buf, _ = self.buffer(row)
            buf["skipped"].append([row, reason, error])
            buf["n"] += 1
        for k in [k for k, buf in self.open.items() if buf["n"] == len(self.shards.rows(k))]:
            self.write(k, self.open.pop(k), trainer.global_rank)

    def write(self, k: int, buf: dict, rank: int) -> None:
        path = self.shards.path(self.directory, k)
        tmp = path.with_suffix(".tmp")  # inside the cache folder; renamed only when complete
        n, rows = len(self.shards.rows(k)), buf["rows"]
        tensors = {"valid": torch.tensor([int(r in rows) for r in range(n)], dtype=torch.uint8)}
        first = next(iter(rows.values()), {})
        for name, example in first.items():
            if is_sequence(name, example):  # concatenated, each row's length beside (0 for a skipped row)
                tensors[name] = torch.cat([rows[r][name] for r in sorted(rows)]).contiguous()
                tensors[f"{name}.lengths"] = torch.tensor([len(rows[r][name]) if r in rows else 0 for r in range(n)])
            else:
                tensors[name] = torch.stack([rows[r][name] if r in rows else torch.zeros(example.shape) for r in range(n)]).contiguous()
        save_file(tensors, str(tmp), metadata={"skipped": json.dumps(buf["skipped"])})
        os.replace(tmp, path)
        if not sys.stderr.isatty():
            print(f"features: rank {rank} wrote {path.name} ({n} rows)", flush=True)


def run_extraction(model, records, directory, shards: Shards, pending, batch_size, num_workers, trainer_kwargs) -> None:
    dataset = UtteranceDataset(records, model.processor)
    data = ExtractionData(dataset, shards, pending, model.processor.collate, batch_size, num_workers)
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        callbacks=[ShardWriter(directory, shards)],
        **trainer_kwargs,
    )
    was_training = model.training
    try:
        trainer.predict(FrozenEncoders(model.eval()), datamodule=data, return_predictions=False)
    finally:
        model.train(was_training)  # the caller may go on to train this model (see train.datasets)
    trainer.strategy.barrier()  # every rank's shards are on disk before anyone reads them


def load_shards(directory: Path, shards: Shards, records: list[Utterance], reused: bool) -> Features:
    """Concatenate the shards, keep the valid rows, attach labels from the manifest."""
    parts: dict[str, list[torch.Tensor]] = {}
    skipped = SkipCounter()
    for k in range(shards.count):
        with safe_open(str(shards.path(directory, k)), framework="pt") as f:
            valid = f.get_tensor("valid").bool()
            for name in f.keys():
                if f"{name}.lengths" in f.keys():  # back into one tensor per (valid) row
                    lengths = f.get_tensor(f"{name}.lengths")
                    parts.setdefault(name, []).append(list(f.get_tensor(name).split(lengths[valid].tolist())))
                elif name != "valid" and not name.endswith(".lengths"):
                    parts.setdefault(name, []).append(f.get_tensor(name)[valid])
            rows = torch.tensor(list(shards.rows(k)))[valid]
            parts.setdefault("index", []).append(rows)
            skipped.update({"index": rows, "skipped": [tuple(s) for s in json.loads(f.metadata()["skipped"])]})
    tensors = {name: [row for chunk in chunks for row in chunk] if isinstance(chunks[0], list) else torch.cat(chunks)
               for name, chunks in parts.items()}
    idx = tensors["index"].tolist()
    tensors["emotion"] = torch.tensor([EMOTIONS.index(records[i].emotion) for i in idx], dtype=torch.long)
    tensors["sentiment"] = torch.tensor([SENTIMENTS.index(records[i].sentiment) for i in idx], dtype=torch.long)
    return Features(tensors, skipped, directory, reused)

"""A sharded, resumable Lightning predict loop: what feature extraction and `emosent predict` share.

The rows 0..N-1 are cut into shards of consecutive rows. A shard is computed in batches that never
cross its boundary (so a row's numbers do not depend on which process or run computed it) and is
committed atomically once all its rows are in; a run that is stopped and started again computes
only the shards that are missing. The folder of shards carries a meta.json saying which run it
belongs to, so shards of another run are never mixed in. Under DDP (`--devices N --strategy ddp`,
torchrun, SLURM) global rank 0 lists the pending shards and every rank takes every N-th of them;
a rank left without a shard runs one empty batch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from emosent.files import write_atomically
from emosent.signals import raise_if_interrupted

META_FILE = "meta.json"


@dataclass(frozen=True)
class Shards:
    """Rows 0..total-1 cut into consecutive shards of `size` rows; shard k is committed as
    `directory/shard-0000k{suffix}`."""

    total: int
    size: int
    directory: Path
    suffix: str

    @property
    def count(self) -> int:
        return (self.total + self.size - 1) // self.size

    def rows(self, k: int) -> range:
        return range(k * self.size, min((k + 1) * self.size, self.total))

    def file(self, k: int) -> Path:
        return self.directory / f"shard-{k:05d}{self.suffix}"

    def pending(self) -> list[int]:
        return [k for k in range(self.count) if not self.file(k).is_file()]


def file_stamp(path: Path | None) -> list[int] | None:
    """[size, mtime in ns] of a media file, for a fingerprint: a file replaced in place changes it."""
    stat = path.stat() if path is not None and path.is_file() else None
    return stat and [stat.st_size, stat.st_mtime_ns]


def open_shards(shards: Shards, *, format_version: int, fingerprint: str, mismatch: str, about: dict | None = None) -> None:
    """Create the shards' folder with its meta.json, or check that the one there belongs to this
    same run (format, fingerprint, rows, shard size; `about` is written for the reader, not
    compared); raise ValueError(mismatch) when it does not. Remove what a killed process left
    half-written. Global rank 0 calls this before the loop, holding the run's lock."""
    meta = {"format": format_version, "fingerprint": fingerprint, "rows": shards.total, "shard_rows": shards.size}
    path = shards.directory / META_FILE
    shards.directory.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict) or {k: found.get(k) for k in meta} != meta:
            raise ValueError(mismatch)
    else:
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(meta | (about or {}), indent=2)))
    for stale in shards.directory.glob(".*.tmp"):  # write_atomically's names: a commit that a kill interrupted
        stale.unlink(missing_ok=True)


class ShardBatches(torch.utils.data.Sampler):
    """Batches of at most `batch_size` rows that never cross a shard: a row is computed with the
    same neighbours whichever rank or run takes its shard."""

    def __init__(self, shards: Shards, mine: list[int], batch_size: int):
        self.batches = [list(rows[i:i + batch_size]) for k in mine for rows in [shards.rows(k)]
                        for i in range(0, len(rows), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ShardData(L.LightningDataModule):
    """Each rank reads the rows of every world_size-th pending shard; the pending list is rank 0's."""

    def __init__(self, dataset: Dataset, shards: Shards, pending: list[int], collate, batch_size: int, num_workers: int):
        super().__init__()
        self.dataset, self.shards, self.pending, self.collate = dataset, shards, pending, collate
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        # A rank started later may find shards that rank 0 has since written: all follow rank 0's list.
        pending = self.trainer.strategy.broadcast(self.pending, src=0)
        mine = pending[self.trainer.global_rank :: self.trainer.world_size]
        if not mine:  # more ranks than pending shards: one empty batch, since DDP forbids an empty loader
            return DataLoader([[]], batch_size=None, collate_fn=self.collate)
        return DataLoader(self.dataset, batch_sampler=ShardBatches(self.shards, mine, self.batch_size),
                          collate_fn=self.collate, num_workers=self.num_workers)


class ShardWriter(BasePredictionWriter):
    """Gathers the loop's rows per shard and commits a shard atomically once all its rows are in.
    A subclass says which rows a batch's prediction holds (`batch_rows`: (row number, row) pairs, the
    skipped ones included) and how a shard's rows, in order, are written to a file (`save`)."""

    def __init__(self, shards: Shards, job: str):
        super().__init__(write_interval="batch")
        self.shards, self.job = shards, job
        self.open: dict[int, dict[int, object]] = {}
        self.written = 0

    def batch_rows(self, prediction: dict) -> Iterable[tuple[int, object]]:
        raise NotImplementedError

    def save(self, k: int, rows: list, path: Path) -> None:
        raise NotImplementedError

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        raise_if_interrupted()
        for i, row in self.batch_rows(prediction):
            self.open.setdefault(i // self.shards.size, {})[i] = row
        for k in [k for k, got in self.open.items() if len(got) == len(self.shards.rows(k))]:
            got = self.open.pop(k)
            rows = [got[i] for i in self.shards.rows(k)]
            write_atomically(self.shards.file(k), lambda tmp: self.save(k, rows, tmp))
            self.written += 1
            if not sys.stderr.isatty():  # a log file's progress, where there is no progress bar
                print(f"{self.job}: rank {trainer.global_rank} wrote {self.shards.file(k).name} ({len(rows)} rows)", flush=True)


def run_shards(module: L.LightningModule, data: ShardData, writer: ShardWriter, trainer_kwargs: dict) -> L.Trainer:
    """`module.predict_step` over the pending shards of `data`, each committed by `writer`; returns
    once every rank's shards are on disk."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, use_distributed_sampler=False,
                        enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False, callbacks=[writer],
                        **trainer_kwargs)
    trainer.predict(module, datamodule=data, return_predictions=False)
    trainer.strategy.barrier()
    return trainer

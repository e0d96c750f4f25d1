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
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from safetensors import safe_open
from safetensors.torch import save_file

from emosent.data import SkipCounter, Utterance, UtteranceDataset
from emosent.encoders import weights_digest
from emosent.files import default_cache_dir
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.model import EmotionSentimentModel
from emosent.runtime import log, rank_zero_exclusive
from emosent.sharded import ShardData, Shards, ShardWriter, file_stamp, open_shards, run_shards

# bump when the stored layout or the preprocessing code changes meaning
# (5: presence masks; meta.json names its format; batches no longer cross a shard;
#  6: frames scaled down by FFmpeg at decode, silence read as no audio)
FORMAT_VERSION = 6
SHARD_ROWS = 256
# Outputs stored per row with their own length (concatenated, with a "<name>.lengths" tensor):
# the text encoder's boundary hidden states (L, H) when its top layers train, and their token types (L,).
SEQUENCES = ("text_features", "token_type_ids")


def is_sequence(name: str, row: torch.Tensor) -> bool:
    return name == "token_type_ids" or (name in SEQUENCES and row.dim() == 2)


def fingerprint(model: EmotionSentimentModel, records: list[Utterance], weights: str | None = None) -> str:
    """Everything that changes the frozen outputs: the processor's settings (and tokenizer), the
    frozen weights' digest, pooling, and the rows (text, media file with its size and mtime, time
    range). `weights`: `weights_digest(model.feature_modules())` when the caller has it already."""
    modalities = model.modalities
    spec = {
        "format": FORMAT_VERSION,
        "processor": model.processor.fingerprint(),
        "frozen": model.frozen_spec(),  # e.g. the text pooling; the audio convolutions pooled all or masked, or training
        "weights": weights or weights_digest(model.feature_modules()),
    }
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    media = {"video", "audio"} & set(modalities)
    for r in records:
        row = [model.processor.text_input(r) if "text" in modalities else None]
        if media:
            # resolved: `--data meld` and `--data /abs/meld` are the same rows. os.path.realpath, not
            # Path.resolve: a symlink loop is a clip the processor skips, not a RuntimeError here
            row += [os.path.realpath(r.path) if r.path else None, r.start, r.end, file_stamp(r.path)]
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
    directory = (cache_dir or default_cache_dir()) / "features" / f"{split}-{key[:20]}-{shard_rows}"
    shards = Shards(len(records), shard_rows, directory, ".safetensors")
    # One extraction per feature set: a second process sharing the cache waits here, then finds
    # the shards done. Only global rank 0 locks: DDP ranks of one job share its pending list.
    lock = directory.with_name(directory.name + ".lock")
    with rank_zero_exclusive(lock, wait=True, holder=str(lock)):
        if rank_zero_only.rank == 0:
            open_shards(shards, format_version=FORMAT_VERSION, fingerprint=key,
                        mismatch=f"{directory}: holds other features than its name says; remove the folder to extract anew",
                        about={"config": model.config.to_dict(), "processor_config": model.processor.config.to_dict()})
        pending = shards.pending()
        if pending:
            done = shards.count - len(pending)
            log(f"extracting frozen features of {len(records)} {split} rows into {directory}"
                + (f" ({done} of {shards.count} shards already done)" if done else ""))
            run_extraction(model, records, shards, pending, batch_size, num_workers, trainer_kwargs or {})
        else:
            log(f"reusing cached {split} features from {directory} (fingerprint matches: nothing to extract)")
    features = load_shards(shards, records, reused=not pending)
    log(f"{split}: {len(features)} rows with features; {features.skipped.summary('rows')}")
    if len(features) and hasattr(model, "video") and hasattr(model.video, "face"):
        share = features.tensors["video_features"][:, -1]  # the share of a clip's frames with a face
        log(f"{split}: a face in {100 * share.mean():.1f}% of the sampled frames; {int((share == 0).sum())} of "
            f"{len(share)} clips without any face (they get the video encoder's learned no-face input)")
    return features


def extract(data: str | Path, split: str = "train", out: str | Path | None = None, model=None, *,
            model_config=None, processor_config=None, seed: int = 0, batch_size: int = 16, num_workers: int = 2,
            shard_rows: int = SHARD_ROWS, trainer_kwargs: dict | None = None) -> Features:
    """Run a model's frozen parts over `split` of `data` once and cache their outputs in `out`
    (default: the user cache, where train and evaluate look). `model`: a folder of any model type,
    "builtin", or a loaded model; without one, the model that `model_config` and `processor_config`
    describe, its random parts fixed by `seed` (as `emosent train --seed` fixes them)."""
    from emosent.builtin import load_model
    from emosent.data import read_manifest

    if model is not None:
        model = load_model(model)
    else:
        L.seed_everything(seed, verbose=False)
        model = EmotionSentimentModel(model_config, processor_config)
    return extract_features(model, read_manifest(data, split), split, Path(out) if out else None, batch_size=batch_size,
                            num_workers=num_workers, shard_rows=shard_rows, trainer_kwargs=trainer_kwargs)


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


class FeatureWriter(ShardWriter):
    """A shard of frozen outputs as safetensors: each output stacked over the shard's rows (zeros
    for a skipped row, or concatenated with each row's length for sequences), a "valid" mask, and
    the skipped rows with their reasons in the metadata."""

    def __init__(self, shards: Shards):
        super().__init__(shards, "features")

    def batch_rows(self, prediction: dict):
        names = [k for k in prediction if k not in ("index", "skipped")]
        for j, i in enumerate(prediction["index"].tolist()):
            yield i, {name: prediction[name][j] for name in names}
        for i, reason, error in prediction["skipped"]:
            yield i, (reason, error)

    def save(self, k: int, rows: list, path: Path) -> None:
        kept = {r: row for r, row in enumerate(rows) if isinstance(row, dict)}
        n = len(rows)
        tensors = {"valid": torch.tensor([int(r in kept) for r in range(n)], dtype=torch.uint8)}
        first = next(iter(kept.values()), {})
        for name, example in first.items():
            if is_sequence(name, example):  # concatenated, each row's length beside (0 for a skipped row)
                tensors[name] = torch.cat([kept[r][name] for r in sorted(kept)]).contiguous()
                tensors[f"{name}.lengths"] = torch.tensor([len(kept[r][name]) if r in kept else 0 for r in range(n)])
            else:
                tensors[name] = torch.stack([kept[r][name] if r in kept else torch.zeros(example.shape) for r in range(n)]).contiguous()
        skipped = [[i, *row] for i, row in zip(self.shards.rows(k), rows) if not isinstance(row, dict)]
        save_file(tensors, str(path), metadata={"skipped": json.dumps(skipped)})


def run_extraction(model, records, shards: Shards, pending, batch_size, num_workers, trainer_kwargs) -> None:
    data = ShardData(UtteranceDataset(records, model.processor), shards, pending, model.processor.collate, batch_size,
                     num_workers)
    was_training = model.training
    try:
        run_shards(FrozenEncoders(model.eval()), data, FeatureWriter(shards), trainer_kwargs)
    finally:
        model.train(was_training)  # the caller may go on to train this model (see train.datasets)


def load_shards(shards: Shards, records: list[Utterance], reused: bool) -> Features:
    """Concatenate the shards, keep the valid rows, attach labels from the manifest."""
    parts: dict[str, list[torch.Tensor]] = {}
    skipped = SkipCounter()
    for k in range(shards.count):
        with safe_open(str(shards.file(k)), framework="pt") as f:
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
    return Features(tensors, skipped, shards.directory, reused)

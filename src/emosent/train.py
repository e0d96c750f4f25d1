"""The design's training recipe on Lightning.

`EmotionSentimentTask` holds the losses, metrics and optimiser around an injected
`EmotionSentimentModel`; `EmotionDataModule` decides what to serve, cached frozen features (the
default: every trainable layer sits after the frozen encoders) or raw clips through the model's
processor (when part of an encoder is unfrozen), and builds the datasets. `train` composes them
in a Lightning Trainer, which also does checkpoints, resuming, TensorBoard and multi-device /
multi-node DDP.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics import MeanMetric, SumMetric

from emosent.config import Launch, ModelConfig, ProcessorConfig, TrainConfig, audio_lr
from emosent.data import SkipCounter, Utterance, UtteranceDataset, read_manifest
from emosent.encoders import text_defaults, weights_digest
from emosent.features import FeatureDataset, collate_features, extract_features
from emosent.files import write_atomically
from emosent.metrics import TASKS, task_metrics
from emosent.model import EmotionSentimentModel, model_inputs
from emosent.runtime import log, rank_zero_exclusive
from emosent.signals import raise_if_interrupted

RUN_CONFIG = "run_config.json"
LOCK_FILE = ".lock"  # holds the PID of the process training into the folder
RUN_FILES = {RUN_CONFIG, LOCK_FILE, "checkpoints", "tensorboard"}  # what a run writes before its model
TRAINING_FILE = "training.json"  # written beside the exported model: class weights, metrics, steps


PARAM_GROUPS = {"text": ("text",), "video": ("video",), "audio": ("audio",), "fusion": ("fusion",), "heads": ("emotion_head", "sentiment_head")}


def class_weights(labels: list[str], classes: tuple[str, ...], kind: str = "inverse") -> torch.Tensor:
    """Per-class loss weights from the training labels, normalised so they average 1 over the
    training examples. "inverse" (the design): w_c = N / (K * n_c), K the classes present;
    "sqrt": proportional to 1 / sqrt(n_c), a milder push towards rare classes; "none": all 1.
    An absent class gets 0."""
    counts = torch.tensor([labels.count(c) for c in classes], dtype=torch.float)
    present = counts > 0
    weights = torch.zeros(len(classes))
    raw = {"inverse": 1 / counts[present], "sqrt": counts[present].rsqrt(), "none": torch.ones(int(present.sum()))}[kind]
    weights[present] = raw * counts.sum() / (raw * counts[present]).sum()
    return weights


class EmotionSentimentTask(L.LightningModule):
    """Weighted, label-smoothed cross-entropy per head (total = emotion + sentiment), metrics per
    stage, Adam with per-module learning rates, ReduceLROnPlateau on the validation loss."""

    def __init__(self, model: EmotionSentimentModel, config: TrainConfig, emotion_weights: torch.Tensor, sentiment_weights: torch.Tensor,
                 frozen_digest: str | None = None):
        """frozen_digest: `weights_digest(model.frozen_modules())` when the caller has it already."""
        super().__init__()
        if config.lr.get("text") is None:  # the text encoder's default learning rate (its registry entry's)
            config = replace(config, lr={**config.lr, "text": text_defaults(model.config.text_encoder, model.config.finetune_text_layers)["lr_text"]})
        if config.lr.get("audio") is None:  # the design's, or the rate for convolutions that train
            config = replace(config, lr={**config.lr, "audio": audio_lr(model.config)})
        self.model, self.config = model, config
        self.register_buffer("emotion_weights", emotion_weights)
        self.register_buffer("sentiment_weights", sentiment_weights)
        self.metrics = nn.ModuleDict({
            f"{stage}_{task}": task_metrics(len(classes), prefix=f"{stage}/{task}/")
            for stage in ("train", "val") for task, classes in TASKS.items()
        })
        self.mean_loss = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in ("train", "val")})
        self.val_examples = SumMetric()  # how many validation examples the metrics cover, over all devices
        self.skips = {"train": SkipCounter(), "val": SkipCounter()}
        self.frozen_digest = frozen_digest or weights_digest(model.frozen_modules())

    def on_fit_start(self) -> None:
        # Lightning's fit keeps whatever mode the modules are in. The trainable layers (dropout,
        # the fusion BatchNorm) must train; the frozen ones stay in eval (EmotionSentimentModel.train).
        self.model.train()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        raise_if_interrupted()
        # Dropout draws from the global RNG: make it a function of (seed, epoch, batch, rank), as
        # the data order is of (seed, epoch) (EmotionDataModule), so a run resumed from the end of
        # epoch e - 1 trains epoch e exactly as an uninterrupted run does, to the bit on CPU.
        # Per batch, not per epoch: Lightning draws from the same RNG between the hooks (a data
        # loader's base seed), at other points in a resumed run than in a fresh one.
        torch.manual_seed(batch_seed(self.config.seed, self.current_epoch, batch_idx, self.global_rank))

    def step(self, batch: dict, stage: str) -> torch.Tensor | None:
        if "skipped" in batch:
            self.skips[stage].update(batch)
        n = batch["emotion"].numel()
        if n == 0 or (stage == "train" and n < 2):  # BatchNorm cannot train on one example
            return None
        out = self.model(**model_inputs(batch))
        smoothing = self.config.label_smoothing
        loss = (F.cross_entropy(out.emotion_logits, batch["emotion"], weight=self.emotion_weights, label_smoothing=smoothing)
                + F.cross_entropy(out.sentiment_logits, batch["sentiment"], weight=self.sentiment_weights, label_smoothing=smoothing))
        self.mean_loss[f"{stage}_loss"].update(loss.detach(), weight=n)
        self.log(f"{stage}/loss", self.mean_loss[f"{stage}_loss"], on_step=False, on_epoch=True, batch_size=n)
        for task, logits in (("emotion", out.emotion_logits), ("sentiment", out.sentiment_logits)):
            metrics = self.metrics[f"{stage}_{task}"]
            metrics.update(logits.detach(), batch[task])
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n)
        if stage == "val":
            self.val_examples.update(torch.tensor(float(n), device=self.device))
            self.log("val/examples", self.val_examples, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def training_step(self, batch: dict, batch_idx: int):
        return self.step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int):
        self.step(batch, "val")

    def on_train_epoch_end(self) -> None:
        self.report_skips("train")

    def on_validation_epoch_end(self) -> None:
        self.report_skips("val")
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            # ReduceLROnPlateau steps here, before the epoch's checkpoint is written (at validation
            # end), not after the epoch as Lightning would: Lightning skips that step for the epoch
            # a resumed run restarts from, and the resumed LRs would drift from an uninterrupted run's.
            self.lr_schedulers().step(self.mean_loss["val_loss"].compute())

    def lr_scheduler_step(self, scheduler, metric) -> None:
        pass  # stepped in on_validation_epoch_end

    def report_skips(self, stage: str) -> None:
        counter = self.skips[stage]
        if counter.skipped:
            print(f"[rank {self.global_rank}] {stage}: {counter.summary()}", file=sys.stderr, flush=True)
        counter.reset()

    def configure_optimizers(self):
        groups = []
        for name, prefixes in PARAM_GROUPS.items():
            params = [p for prefix in prefixes if hasattr(self.model, prefix) for p in getattr(self.model, prefix).parameters() if p.requires_grad]
            if params:
                groups.append({"name": name, "params": params, "lr": self.config.lr[name]})
        optimizer = torch.optim.Adam(groups, weight_decay=self.config.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.config.plateau_factor, patience=self.config.plateau_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}

    # Checkpoints keep only what training changes. The frozen weights (hundreds of MB) are
    # identified by their digest and checked on resume.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = frozen_keys(self)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["frozen_digest"] = self.frozen_digest

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("frozen_digest") != self.frozen_digest:
            raise ValueError("the checkpoint was trained on other frozen encoder weights: resume with the same "
                             "--text-encoder, --video-weights, --modalities and --seed as the original run")
        current = self.state_dict()
        checkpoint["state_dict"].update({k: current[k] for k in frozen_keys(self)})


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{batch}/{rank}".encode()).digest()[:8], "little")


def frozen_keys(task: EmotionSentimentTask) -> set[str]:
    return {f"model.{name}" for name in task.model.frozen_state_keys()}


class EmotionDataModule(L.LightningDataModule):
    """Train and validation data for `model`: cached frozen features when every trainable layer
    sits after the frozen parts, raw clips through `model.processor` otherwise (`prepare`). Under
    DDP each rank gets its share, and validation is split without padding so that metrics count
    every example exactly once. The training order is a function of (seed, epoch) on one device
    too (EpochSampler)."""

    def __init__(self, model: EmotionSentimentModel, train_records: list[Utterance], val_records: list[Utterance],
                 config: TrainConfig, *, trainer_kwargs: dict, cache_dir: Path | None = None, frozen_digest: str | None = None,
                 cached: bool | None = None):
        """cached: None decides (features when they can be cached); False serves raw clips anyway
        (benchmarks compare the two)."""
        super().__init__()
        self.cached = cached
        self.model, self.records, self.config = model, {"train": train_records, "val": val_records}, config
        self.trainer_kwargs, self.cache_dir, self.frozen_digest = trainer_kwargs, cache_dir, frozen_digest
        self.sets: dict[str, Dataset] = {}
        self.collate, self.num_workers = None, 0

    def prepare(self) -> None:
        """Build the datasets, extracting frozen features when they can be cached. Called before
        `Trainer.fit`, not in `setup`: extraction is a Lightning predict loop of its own (batched
        on the GPU, run by every DDP rank), which cannot run inside fit. When caching, the frozen
        modules are exactly the feature modules, so `frozen_digest` keys the cache."""
        splits = {"train": self.config.train_split, "val": self.config.val_split}
        if self.cached is False or self.model.trains_encoder_internals():
            if self.cached is None:
                log("training end to end: part of an encoder is trainable, so its outputs cannot be cached")
            self.sets = {stage: UtteranceDataset(records, self.model.processor) for stage, records in self.records.items()}
            for stage, dataset in self.sets.items():
                check_usable(dataset, splits[stage])
            self.collate, self.num_workers = self.model.processor.collate, self.config.num_workers
            return
        for stage, records in self.records.items():
            features = extract_features(self.model, records, splits[stage], self.cache_dir, num_workers=self.config.num_workers,
                                        trainer_kwargs=self.trainer_kwargs, weights=self.frozen_digest)
            if not len(features):
                raise ValueError(f"no usable clip in the {splits[stage]} split, so training cannot start: {features.skipped.summary()}")
            self.sets[stage] = FeatureDataset(features)
        self.collate, self.num_workers = collate_features, 0  # tensors in memory: worker processes would only add start-up time

    def loader(self, dataset: Dataset, sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return self.loader(self.sets["train"], EpochSampler(self.sets["train"], self.trainer, world, rank, self.config.seed))

    def val_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = UnrepeatedDistributedSampler(self.sets["val"], world, rank, shuffle=False) if world > 1 else None
        return self.loader(self.sets["val"], sampler)


class EpochSampler(DistributedSampler):
    """A shuffled share of the data whose order is a function of (seed, epoch), the epoch read from
    the trainer when iteration starts. Lightning's set_epoch comes too late in a resumed run: its
    first loader iterator is made (and, with worker processes, draws its indices) before the call."""

    def __init__(self, dataset: Dataset, trainer: L.Trainer, world: int, rank: int, seed: int):
        super().__init__(dataset, world, rank, shuffle=True, seed=seed)
        self.trainer = trainer

    def __iter__(self):
        # `processed`, not `current_epoch`: a resumed run creates its iterator before Lightning
        # marks the restored epoch completed. The same count Lightning passes to set_epoch.
        self.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return super().__iter__()


class EpochCheckpoint(ModelCheckpoint):
    """Names checkpoints by the 1-based epoch that the epoch log and training.json use and, where
    there is no terminal for a progress bar (CI, log files), prints one plain line per epoch once
    its checkpoint is on disk (so a line means the epoch is safe)."""

    def __init__(self, *args, log_epochs: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_epochs = log_epochs

    def format_checkpoint_name(self, metrics: dict, filename: str | None = None, ver: int | None = None, prefix: str | None = None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after the epoch's validation
        super().on_train_epoch_end(trainer, pl_module)
        if not (self.log_epochs and trainer.is_global_zero):
            return
        m = trainer.callback_metrics
        keys = ("train/loss", "val/loss", "val/emotion/accuracy", "val/emotion/weighted_f1", "val/sentiment/accuracy")
        shown = " ".join(f"{k}={float(m[k]):.4f}" for k in keys if k in m)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {trainer.global_step} {shown}", flush=True)


def train(
    data: str | Path,
    out: str | Path,
    model_config: ModelConfig,
    config: TrainConfig = TrainConfig(),
    launch: Launch = Launch(),
    *,
    processor_config: ProcessorConfig = ProcessorConfig(),
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """Train on `data` (MELD layout or your own CSVs), preprocessed as `processor_config` says;
    write the run to `out`, return the exported model directory `out/model`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; name a folder for the run")
    # Everything that can fail on bad input fails here, before the run folder is touched.
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_records = read_manifest(data, config.train_split)
    val_records = read_manifest(data, config.val_split)
    model = EmotionSentimentModel(model_config, processor_config)
    weights = {task: class_weights([getattr(r, task) for r in train_records], classes, config.class_weights)
               for task, classes in TASKS.items()}
    # Hashed once (bert-base is 440 MB): it keys both splits' feature caches and marks checkpoints.
    frozen_digest = weights_digest(model.frozen_modules())
    # One training process per run folder.
    with rank_zero_exclusive(out / LOCK_FILE, wait=False, holder=f"run folder {out}"):
        resume = prepare_run_dir(out, model, config, resume)
        data = EmotionDataModule(model, train_records, val_records, config, trainer_kwargs=launch.trainer_kwargs(),
                                 cache_dir=Path(cache_dir) if cache_dir else None, frozen_digest=frozen_digest)
        data.prepare()
        return fit(out, model, weights, frozen_digest, data, config, launch, resume)


def fit(out: Path, model: EmotionSentimentModel, weights: dict, frozen_digest: str, data: EmotionDataModule,
        config: TrainConfig, launch: Launch, resume: bool) -> Path:
    """The Lightning part of `train`, in a run folder already prepared and locked."""
    # Extraction, when it runs, draws from the global RNGs: seed again so that shuffling and
    # dropout are the same whether the feature cache was cold or warm.
    L.seed_everything(config.seed, workers=True, verbose=False)
    task = EmotionSentimentTask(model, config, weights["emotion"], weights["sentiment"], frozen_digest)
    checkpoints = EpochCheckpoint(dirpath=out / "checkpoints", filename="best-epoch{epoch:02d}", auto_insert_metric_name=False,
                                  monitor=config.monitor, mode="min" if config.monitor.endswith("loss") else "max", save_top_k=1, save_last=True, log_epochs=not sys.stderr.isatty())
    on_terminal = sys.stderr.isatty()
    trainer = L.Trainer(
        max_epochs=config.epochs,
        gradient_clip_val=config.grad_clip_norm,
        logger=TensorBoardLogger(out, name="tensorboard", version=""),
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="epoch")],
        use_distributed_sampler=False,  # EmotionDataModule shards the data itself (unpadded validation)
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=on_terminal,
        enable_model_summary=False,
        **launch.trainer_kwargs(),
    )
    trainer.fit(task, datamodule=data, ckpt_path=out / "checkpoints" / "last.ckpt" if resume else None)
    if trainer.is_global_zero:
        export_best(task, checkpoints.best_model_path, out, weights, trainer)
        print(f"model: {out / 'model'}\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}", flush=True)
    trainer.strategy.barrier()
    return out / "model"


def check_usable(dataset: UtteranceDataset, split: str) -> None:
    """Stop before training when no item of `dataset` can be read; stops at the first good item,
    so a healthy split costs one clip."""
    skipped = SkipCounter()
    for i in range(len(dataset)):
        item = dataset[i]
        if "skip" not in item:
            return
        skipped.update({"index": [], "skipped": [(i, item["skip"], item["error"])]})
    raise ValueError(f"no usable clip in the {split} split, so training cannot start: {skipped.summary()}")


def prepare_run_dir(out: Path, model: EmotionSentimentModel, config: TrainConfig, resume: bool) -> bool:
    """Whether to resume: a folder with a last checkpoint needs --resume and the same model
    options; a new, empty or checkpoint-less folder (a start that failed or was killed before its
    first epoch ended) starts from the beginning. Files that are not ours are never touched."""
    if rank_zero_only.rank != 0:  # processes started by the DDP launcher find the folder made by rank 0
        return resume and (out / "checkpoints" / "last.ckpt").is_file()
    run_config = {"model_config": model.config.to_dict(), "processor_config": model.processor.config.to_dict(),
                  "train_config": asdict(config)}
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        try:
            saved = json.loads((out / RUN_CONFIG).read_text())
            # runs begun before processor.json kept n_mels in model_config and used the default preprocessing
            default = {"processor_config": ProcessorConfig(n_mels=saved["model_config"].pop("n_mels", 64)).to_dict()}
            saved = default | {k: saved[k] for k in ("model_config", "processor_config") if k in saved}
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"--resume: {out / RUN_CONFIG} is missing or unreadable, so the run's model options are "
                             "unknown; start a new run in another --out") from None
        for key, what in (("model_config", "model"), ("processor_config", "preprocessing")):
            if saved[key] != run_config[key]:
                raise ValueError(f"--resume: the {what} options differ from the run in {out} ({saved[key]})")
        try:
            torch.load(last, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated (a full disk) or not a checkpoint
            raise ValueError(f"--resume: {last} cannot be read ({err.__class__.__name__}); it is truncated or corrupt. "
                             f"Delete it to start the run again from the beginning") from None
    else:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise FileExistsError(f"{out} holds files that are not an emosent run ({', '.join(foreign[:3])}): "
                                  "choose an empty or new --out")
        if resume or (out / RUN_CONFIG).exists():
            log(f"{out}: no finished epoch to resume from, so the run starts from the beginning")
        for leftover in ("checkpoints", "tensorboard"):  # of a start that ended before its first checkpoint
            shutil.rmtree(out / leftover, ignore_errors=True)
        resume = False
    text = json.dumps(run_config, indent=2) + "\n"
    write_atomically(out / RUN_CONFIG, lambda tmp: tmp.write_text(text))
    return resume


def export_best(task: EmotionSentimentTask, best_path: str, out: Path, weights: dict, trainer: L.Trainer) -> None:
    """The best checkpoint as a self-describing model directory, with the class weights used."""
    checkpoint = torch.load(best_path, map_location="cpu", weights_only=True)
    task.on_load_checkpoint(checkpoint)
    task.load_state_dict(checkpoint["state_dict"])
    model_dir = task.model.save_pretrained(out / "model")
    summary = {
        "class_weights": {t: dict(zip(classes, weights[t].tolist())) for t, classes in TASKS.items()},
        "best_checkpoint": Path(best_path).name,
        "best_epoch": checkpoint["epoch"] + 1,
        "global_step": trainer.global_step,
        "epochs_run": trainer.current_epoch,
        "last_epoch_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "train_config": asdict(task.config),
    }
    (model_dir / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")

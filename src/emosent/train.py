"""The design's training recipe on Lightning.

`EmotionSentimentTask` holds the losses, metrics and optimiser around an injected
`EmotionSentimentModel`; `EmotionDataModule` serves either cached frozen features (the default:
every trainable layer sits after the frozen encoders) or raw clips (when part of an encoder is
unfrozen). `train` wires them into a Lightning Trainer, which also does checkpoints, resuming,
TensorBoard and multi-device / multi-node DDP.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics import MeanMetric, SumMetric

from emosent.config import Launch, ModelConfig, TrainConfig
from emosent.data import Collator, SkipCounter, Utterance, UtteranceDataset, read_manifest
from emosent.features import FeatureDataset, extract_features, log, weights_digest
from emosent.metrics import TASKS, task_metrics
from emosent.model import EmotionSentimentModel, model_inputs

RUN_CONFIG = "run_config.json"
TRAINING_FILE = "training.json"  # written beside the exported model: class weights, metrics, steps


PARAM_GROUPS = {"text": ("text",), "video": ("video",), "audio": ("audio",), "fusion": ("fusion",), "heads": ("emotion_head", "sentiment_head")}


def class_weights(labels: list[str], classes: tuple[str, ...]) -> torch.Tensor:
    """Inverse frequency, normalised so the weights average 1 over the training examples:
    w_c = N / (K * n_c) with K the number of classes present. An absent class gets 0."""
    counts = torch.tensor([labels.count(c) for c in classes], dtype=torch.float)
    present = counts > 0
    weights = torch.zeros(len(classes))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class EmotionSentimentTask(L.LightningModule):
    """Weighted, label-smoothed cross-entropy per head (total = emotion + sentiment), metrics per
    stage, Adam with per-module learning rates, ReduceLROnPlateau on the validation loss."""

    def __init__(self, model: EmotionSentimentModel, config: TrainConfig, emotion_weights: torch.Tensor, sentiment_weights: torch.Tensor,
                 frozen_digest: str | None = None):
        """frozen_digest: `weights_digest(model.frozen_modules())` when the caller has it already."""
        super().__init__()
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


def frozen_keys(task: EmotionSentimentTask) -> set[str]:
    return {f"model.{name}" for name in task.model.frozen_state_keys()}


class EmotionDataModule(L.LightningDataModule):
    """Train and validation loaders; under DDP each rank gets its share, and validation is split
    without padding so that metrics count every example exactly once."""

    def __init__(self, train_set: Dataset, val_set: Dataset, collate, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.train_set, self.val_set, self.collate = train_set, val_set, collate
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def loader(self, dataset: Dataset, sampler, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          collate_fn=self.collate, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.train_set, world, rank, shuffle=True, seed=self.seed) if world > 1 else None
        return self.loader(self.train_set, sampler, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = UnrepeatedDistributedSampler(self.val_set, world, rank, shuffle=False) if world > 1 else None
        return self.loader(self.val_set, sampler, shuffle=False)


class EpochLog(Callback):
    """One plain line per epoch where there is no terminal for a progress bar (CI, log files)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after the epoch's validation
        if not trainer.is_global_zero:
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
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """Train on `data` (MELD layout or your own CSVs), write the run to `out`, return the
    exported model directory `out/model`."""
    out = Path(out)
    prepare_run_dir(out, model_config, config, resume)
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_records = read_manifest(data, config.train_split)
    val_records = read_manifest(data, config.val_split)
    model = EmotionSentimentModel(model_config)
    weights = {task: class_weights([getattr(r, task) for r in train_records], classes) for task, classes in TASKS.items()}
    # Hashed once (bert-base is 440 MB): it keys both splits' feature caches and marks checkpoints.
    frozen_digest = weights_digest(model.frozen_modules())
    train_set, val_set, collate, workers = datasets(model, train_records, val_records, config, launch, cache_dir, frozen_digest)
    # Extraction, when it runs, draws from the global RNGs: seed again so that shuffling and
    # dropout are the same whether the feature cache was cold or warm.
    L.seed_everything(config.seed, workers=True, verbose=False)
    task = EmotionSentimentTask(model, config, weights["emotion"], weights["sentiment"], frozen_digest)
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="best-epoch{epoch:02d}", auto_insert_metric_name=False,
                                  monitor="val/loss", mode="min", save_top_k=1, save_last=True)
    on_terminal = sys.stderr.isatty()
    trainer = L.Trainer(
        max_epochs=config.epochs,
        gradient_clip_val=config.grad_clip_norm,
        logger=TensorBoardLogger(out, name="tensorboard", version=""),
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="epoch")] + ([] if on_terminal else [EpochLog()]),
        use_distributed_sampler=False,  # EmotionDataModule shards the data itself (unpadded validation)
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=on_terminal,
        enable_model_summary=False,
        **launch.trainer_kwargs(),
    )
    data_module = EmotionDataModule(train_set, val_set, collate, config.batch_size, workers, config.seed)
    trainer.fit(task, datamodule=data_module, ckpt_path=out / "checkpoints" / "last.ckpt" if resume else None)
    if trainer.is_global_zero:
        export_best(task, checkpoints.best_model_path, out, weights, trainer)
        print(f"model: {out / 'model'}\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}", flush=True)
    trainer.strategy.barrier()
    return out / "model"


def datasets(model, train_records: list[Utterance], val_records: list[Utterance], config: TrainConfig, launch: Launch, cache_dir,
             frozen_digest: str):
    """(train set, validation set, collate function, loader workers): cached frozen features when
    every trainable layer sits after the frozen parts, raw clips otherwise. When caching, the
    frozen modules are exactly the feature modules, so `frozen_digest` keys the cache."""
    if model.trains_encoder_internals():
        log("training end to end: part of an encoder is trainable, so its outputs cannot be cached")
        modalities = model.config.modalities
        return (UtteranceDataset(train_records, modalities), UtteranceDataset(val_records, modalities),
                Collator(model.tokenizer), config.num_workers)
    kwargs = dict(cache_dir=Path(cache_dir) if cache_dir else None, num_workers=config.num_workers, trainer_kwargs=launch.trainer_kwargs(),
                  weights=frozen_digest)
    train_features = extract_features(model, train_records, config.train_split, **kwargs)
    val_features = extract_features(model, val_records, config.val_split, **kwargs)
    return FeatureDataset(train_features), FeatureDataset(val_features), None, 0


def prepare_run_dir(out: Path, model_config: ModelConfig, config: TrainConfig, resume: bool) -> None:
    """A new run needs an empty folder; --resume needs the same model configuration and a last checkpoint."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # processes started by the DDP launcher find the folder made by rank 0
        return
    run_config = {"model_config": model_config.to_dict(), "train_config": asdict(config)}
    if resume:
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"--resume: {last} not found; start a new run without --resume")
        saved = json.loads((out / RUN_CONFIG).read_text())
        if saved["model_config"] != run_config["model_config"]:
            raise ValueError(f"--resume: the model options differ from the run in {out} ({saved['model_config']})")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG).write_text(json.dumps(run_config, indent=2) + "\n")


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

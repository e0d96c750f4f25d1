"""Time per training epoch: end to end (decode every clip and run every frozen encoder, as the
tutorial did) against cached frozen features (emosent's default), on the same make-sample data,
in one run. Each mode runs in its own process so that its peak memory is its own; the frozen
features' one-time extraction runs in a third process before the cached epochs.

    .venv/bin/python bench/train_epoch.py [--n-per-class 3] [--epochs 3]

Prints one line per mode and the ratio. Both modes train the same EmotionSentimentTask with the
same batches (num_workers=0, so all the work is in the measured process).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = dict(text_encoder="minilm", video_weights="none")  # R3D-18 costs the same with any weights


def run_mode(mode: str, data: Path, cache: Path, epochs: int, batch_size: int) -> dict:
    """Train `epochs` epochs in this process; return the epoch times and peak memory."""
    import lightning as L
    import torch

    from emosent.config import ModelConfig, TrainConfig
    from emosent.data import read_manifest
    from emosent.labels import EMOTIONS, SENTIMENTS
    from emosent.model import EmotionSentimentModel
    from emosent.train import EmotionDataModule, EmotionSentimentTask, class_weights

    L.seed_everything(0, verbose=False)
    records = read_manifest(data, "train")
    model = EmotionSentimentModel(ModelConfig(**MODEL))
    # validation on the training rows (one batch, see EpochTimer): one feature set serves both
    config = TrainConfig(batch_size=batch_size, num_workers=0, val_split="train")
    data_module = EmotionDataModule(model, records, records, config, trainer_kwargs={}, cache_dir=cache, cached=mode != "e2e")
    start = time.perf_counter()
    data_module.prepare()  # "cached" finds the shards "extract" wrote: no extraction
    if mode == "extract":
        return {"mode": mode, "extraction_s": time.perf_counter() - start}
    task = EmotionSentimentTask(model, config, class_weights([r.emotion for r in records], EMOTIONS),
                                class_weights([r.sentiment for r in records], SENTIMENTS))
    times: list[float] = []

    class EpochTimer(L.Callback):
        """From the epoch's first batch to the start of its validation (one batch, needed only by
        the plateau scheduler): the training pass alone."""

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(max_epochs=epochs, limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[EpochTimer()])
    trainer.fit(task, datamodule=data_module)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"mode": mode, "epoch_s": times, "peak_mb": peak_mb, "rows": len(records),
            "steps": trainer.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-per-class", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs (end to end runs 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mode", choices=("e2e", "extract", "cached"), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        epochs = args.epochs if args.mode == "cached" else 1
        print(json.dumps(run_mode(args.mode, args.data, args.cache, epochs, args.batch_size)))
        return

    from emosent.synthetic import make_sample

    import machine

    print(f"machine: {machine.describe('auto')}")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_sample(Path(tmp) / "data", n_per_class=args.n_per_class, seed=0)
        results = {}
        for mode in ("e2e", "extract", "cached"):
            child = subprocess.run([sys.executable, __file__, "--mode", mode, "--data", str(data), "--cache", str(Path(tmp) / "cache"),
                                    "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)],
                                   capture_output=True, text=True, check=True)
            results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    e2e, cached = results["e2e"], results["cached"]
    e2e_s, cached_s = statistics.median(e2e["epoch_s"]), statistics.median(cached["epoch_s"])
    print(f"data: make-sample --n-per-class {args.n_per_class}: {e2e['rows']} training clips, batch {args.batch_size}, "
          f"text minilm + R3D-18 + audio")
    print(f"{'mode':<12}{'epoch (s)':>12}{'peak memory (MB)':>20}")
    print(f"{'end to end':<12}{e2e_s:>12.3f}{e2e['peak_mb']:>20.0f}")
    print(f"{'cached':<12}{cached_s:>12.4f}{cached['peak_mb']:>20.0f}   (after a one-time extraction of {results['extract']['extraction_s']:.1f} s)")
    print(f"ratio: cached epochs are {e2e_s / cached_s:.0f}x faster")


if __name__ == "__main__":
    main()

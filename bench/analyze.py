"""Real-time factor of `emosent analyze`: a generated 60-second 640x360 video with 20 subtitle
segments, the minilm text encoder and R3D-18, with the time split per stage.

    .venv/bin/python bench/analyze.py [--device auto|cpu|cuda] [--repeats 3]

RTF = processing time / video duration (the model is loaded once, before timing, as a service
would). The in-run baseline is the same analysis one segment at a time (batch size 1), the way a
per-segment endpoint works; the ratio says what batching buys.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import srt
import torch

from emosent import EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze
from emosent.synthetic import write_clip

import machine

DURATION_S = 60.0
WIDTH, HEIGHT, FPS = 640, 360, 25
SEGMENTS = 20
SENTENCES = ("I can't believe you did that", "This is the best day ever", "Well, I guess that's fine",
             "Get out of here right now", "Oh no, what happened to you")


def moving_frames(i: int, t: float) -> np.ndarray:
    """A drifting colour gradient with a moving square: real motion for the encoder to code."""
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None]
    frame = np.stack([(x + 0.1 * t) % 1 * np.ones_like(y), (y + 0.05 * t) % 1 * np.ones_like(x), 0.5 * np.ones((HEIGHT, WIDTH))], -1)
    cx, cy = int((0.5 + 0.4 * np.sin(t)) * WIDTH), int((0.5 + 0.4 * np.cos(t)) * HEIGHT)
    frame[max(cy - 30, 0):cy + 30, max(cx - 30, 0):cx + 30] = 1.0
    return (frame * 255).astype(np.uint8)


def speech_like(t: np.ndarray) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def write_srt(path: Path) -> Path:
    step = DURATION_S / SEGMENTS
    cues = [srt.Subtitle(k + 1, timedelta(seconds=k * step + 0.1), timedelta(seconds=(k + 1) * step - 0.1),
                         SENTENCES[k % len(SENTENCES)]) for k in range(SEGMENTS)]
    path.write_text(srt.compose(cues))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="minilm", video_weights="none"))
    with tempfile.TemporaryDirectory() as tmp:
        video = write_clip(Path(tmp) / "talk.mp4", duration_s=DURATION_S, fps=FPS, width=WIDTH, height=HEIGHT,
                           frame_fn=moving_frames, audio_fn=speech_like, gop=2 * FPS)
        subtitles = write_srt(Path(tmp) / "talk.srt")
        run = lambda batch_size: analyze(video, model, subtitles=subtitles, batch_size=batch_size, device=args.device)
        run(args.batch_size)  # warm-up: librosa's numba compilation, allocator, cuDNN autotuning
        batched = [run(args.batch_size) for _ in range(args.repeats)]
        single = run(1)
    assert all(len(r["utterances"]) == SEGMENTS for r in batched)
    best = min(batched, key=lambda r: r["elapsed_s"])
    elapsed = statistics.median(r["elapsed_s"] for r in batched)
    print(f"machine: {machine.describe(args.device)}")
    print(f"video: {DURATION_S:.0f} s, {WIDTH}x{HEIGHT} {FPS} fps H.264 + AAC, {SEGMENTS} subtitle segments; "
          f"model: minilm + R3D-18 + audio CNN; batch {args.batch_size}; median of {args.repeats}")
    print(f"RTF {elapsed / DURATION_S:.3f} ({elapsed:.2f} s for {DURATION_S:.0f} s of video)")
    print("stage split (fastest run): " + ", ".join(f"{k} {v:.2f} s ({v / best['elapsed_s']:.0%})" for k, v in best["timing_s"].items()))
    print(f"baseline, one segment at a time: RTF {single['elapsed_s'] / DURATION_S:.3f}; batching is "
          f"{single['elapsed_s'] / elapsed:.2f}x faster")


if __name__ == "__main__":
    main()

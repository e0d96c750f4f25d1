"""Peak memory of hostile-sized work (issue 28, point 6): `emosent analyze` on a generated
7680x4320 video of ten frames, and `emosent predict` at the default and the largest --batch-size
over generated clips, each as a real command in a subprocess.

    .venv/bin/python bench/memory.py [--clips 128] [--skip-builtin]

Peak RSS is the largest sum, over the command's process tree (the command and its data loader
workers), of the processes' resident memory, sampled from /proc every 50 ms. The in-run
reference for predict is the same run at the default --batch-size 8; --batch-size 1000 (the
issue's) is refused before any work, and the script checks that too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emosent import EmotionSentimentModel, ModelConfig
from emosent.synthetic import write_clip

import machine

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SAMPLE_S = 0.05


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21])  # field 24 of stat: resident pages
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total * PAGE_KB / 1024


def run_peak(args: list[str]) -> tuple[int, float, float, str]:
    """(exit status, peak RSS of the tree in MB, seconds, stderr's last line) of `python -m emosent ARGS`."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "emosent", *map(str, args)], stdout=subprocess.DEVNULL, stderr=err)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(SAMPLE_S)
        err.seek(0)
        last = (err.read().decode(errors="replace").strip().splitlines() or [""])[-1]
    return proc.returncode, peak, time.perf_counter() - started, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=128, help="clips for predict (320x240, 2 s)")
    parser.add_argument("--skip-builtin", action="store_true", help="analyze with the R3D-18 model only")
    args = parser.parse_args()
    print(machine.describe())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)  # a random R3D-18 reads frames as a trained one does: the memory is the same
        r3d = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none")).save_pretrained(tmp / "r3d")
        transcript = tmp / "t.json"
        transcript.write_text(json.dumps([{"start": 0.0, "end": 0.5, "text": "what a day"},
                                          {"start": 0.5, "end": 1.0, "text": "I am furious"}]))
        video = write_clip(tmp / "8k.mp4", duration_s=1.0, fps=10, width=7680, height=4320,
                           frame_fn=lambda i, t: np.full((4320, 7680, 3), 25 * i, np.uint8),
                           audio_fn=lambda t: (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
        print(f"8K video: 10 frames of 7680x4320, {video.stat().st_size / 1e3:.0f} KB")
        models = [("R3D-18 multimodal (random weights)", r3d)] + ([] if args.skip_builtin else [("built-in", "builtin")])
        for name, model in models:
            extra = [] if model == "builtin" else ["--model", model]
            rc, peak, seconds, last = run_peak(["analyze", video, "--transcript", transcript, *extra])
            print(f"analyze 8K, {name}: exit {rc}, peak RSS {peak:.0f} MB, {seconds:.0f} s  [{last[:120]}]")

        clips = tmp / "clips"
        clips.mkdir()
        rows = ["path,text"]
        for i in range(args.clips):
            write_clip(clips / f"c{i:03d}.mp4", duration_s=2.0, fps=25, width=320, height=240,
                       frame_fn=lambda k, t, i=i: np.full((240, 320, 3), (8 * k + i) % 256, np.uint8),
                       audio_fn=lambda t: (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32))
            rows.append(f"c{i:03d}.mp4,line number {i}")
        (clips / "rows.csv").write_text("\n".join(rows) + "\n")
        for batch in (8, 64, 1000):
            out = tmp / f"p{batch}.jsonl"
            rc, peak, seconds, last = run_peak(["predict", "--data", clips / "rows.csv", "--out", out, "--model", r3d,
                                                "--batch-size", batch, "--shard-rows", args.clips, "--num-workers", 2])
            print(f"predict {args.clips} clips, --batch-size {batch}: exit {rc}, peak RSS {peak:.0f} MB, {seconds:.0f} s  "
                  f"[{last[:120]}]")


if __name__ == "__main__":
    main()

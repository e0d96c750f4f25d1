"""Start-up: how long `emosent` takes to answer `--help` or a bad option, and a cold `emosent
analyze` of a 2-second clip, against `python -c "import torch"` measured in the same run.

    .venv/bin/python bench/startup.py [--repeats 5]

Every run is a fresh process (`python -m emosent ...`, this interpreter, the emosent it imports),
timed from start to exit. An untimed first round warms the OS file cache for every case alike; the
rounds then alternate between the cases, so a burst of load from other processes hits them alike.
The clip is bench/predict.py's (a face over a drifting background, a speech-like tone), 2 s long,
with one subtitle cue beside it: analyze loads the built-in model and runs all three experts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
from decode import cpu_snapshot
from predict import children_cpu_s, write_talk

CLIP_S = 2.0
CUE = "1\n00:00:00,100 --> 00:00:01,900\nWell, I guess that's fine\n"
BASELINE = "python -c 'import torch'"


def cases(clip: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (command, the exit status it must give)."""
    emosent = [sys.executable, "-m", "emosent"]
    return {
        BASELINE: ([sys.executable, "-c", "import torch"], 0),
        "emosent --help": ([*emosent, "--help"], 0),
        "emosent analyze --help": ([*emosent, "analyze", "--help"], 0),
        "emosent train --epochs x (argument error)": ([*emosent, "train", "--data", "d", "--out", "o", "--epochs", "x"], 2),
        f"emosent analyze CLIP ({CLIP_S:g} s, .srt beside it)": ([*emosent, "analyze", str(clip)], 0),
    }


def timed(command: list[str], status: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != status:  # a case that fails early would time the failure
        raise SystemExit(f"{' '.join(command)}: exit {done.returncode}, expected {status}\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine.describe('cpu')}; load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    before, children = cpu_snapshot(), children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="emosent-bench-") as tmp:
        clip = write_talk(Path(tmp) / "talk.mp4", CLIP_S)
        clip.with_suffix(".srt").write_text(CUE)  # write_talk's cues are 3 s long: none fits in 2 s
        runs = cases(clip)
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.repeats + 1):
            for name, (command, status) in runs.items():
                wall = timed(command, status)
                if round_:
                    walls[name].append(wall)
    after = cpu_snapshot()
    baseline = statistics.median(walls[BASELINE])
    print(f"median of {args.repeats} fresh processes each (min-max); ratio to {BASELINE}")
    for name, values in walls.items():
        median = statistics.median(values)
        print(f"  {name}: {median:.2f} s ({min(values):.2f}-{max(values):.2f}), {median / baseline:.2f}x")
    others_s = (after[0] - before[0]) - (after[1] - before[1]) - (children_cpu_s() - children)
    print(f"took {after[2] - before[2]:.0f} s, during which processes other than this benchmark's used {others_s:.0f} CPU-s of the "
          f"{len(os.sched_getaffinity(0)) * (after[2] - before[2]):.0f} its cores had; load average after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

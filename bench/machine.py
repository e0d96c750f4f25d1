"""One line naming the machine a benchmark ran on, for BENCHMARKS.md (shared by bench/*.py:
`python bench/x.py` puts this folder on sys.path)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(device: str = "cpu") -> str:
    """CPU model, usable cores, the GPU when `device` uses one, torch version and its CPU threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    uses_gpu = device != "cpu" and torch.cuda.is_available()
    gpu = torch.cuda.get_device_name() if uses_gpu else "no GPU used"
    return (f"{cpu_model()}, {cores} cores usable, {gpu}, python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} CPU threads)")

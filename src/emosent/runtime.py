"""How a job runs: on which device, which process speaks to the user, and which one holds a lock.
Used by every job (analyze, predict, train, extraction, serve), so that none imports another's."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from emosent.files import exclusive


@rank_zero_only
def log(message: str) -> None:
    """Progress for the user, once per job (not once per DDP rank)."""
    print(message, flush=True)


@contextlib.contextmanager
def rank_zero_exclusive(lock_path: Path, *, wait: bool, holder: str):
    """`emosent.files.exclusive`, taken by global rank 0 only: the DDP ranks of one job (started
    by its rank 0) share rank 0's lock."""
    if rank_zero_only.rank != 0:
        yield
        return
    with exclusive(lock_path, wait=wait, holder=holder):
        yield


def pick_device(name: str) -> torch.device:
    """"auto" (a GPU when there is one), or a torch device name that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} found); use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported; use auto, cpu or cuda:N")
    return device

"""Shared fixtures: tiny offline models and inputs with the design's shapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
B, T, L, F = 2, 16, 12, 300


def random_batch(b: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, 2000, (b, L), generator=g),
        "attention_mask": torch.ones(b, L, dtype=torch.long),
        "video": torch.randn(b, T, 3, 112, 112, generator=g),
        "audio": torch.randn(b, 1, 64, F, generator=g),
    }


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path} (see ../shared/data/README.md)")
    return path

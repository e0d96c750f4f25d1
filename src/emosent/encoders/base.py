"""What the network (`emosent.model`) needs of an encoder, whatever its modality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class NamedWeights:
    """Frozen weights that a name rebuilds wherever the model is loaded: a model folder names them
    in config.json's frozen_encoders instead of holding them (see `emosent.pretrained`)."""

    source: str  # a registry name, or an absolute folder or file
    modules: list[nn.Module]  # what they fill: left out of model.safetensors; their digest is the sha256
    load: Callable[[str], None]  # fill `modules` from a source
    sha256: str | None = None  # fixed where the weights are files, not torch modules (Whisper-base's)


class Encoder(nn.Module):
    """One modality's encoder: `features(**inputs)` runs its frozen part (cacheable: see
    `emosent.features`) on the batch entries named by `inputs` (audio: and `lengths`, each clip's
    real frames; text: and `token_type_ids`), `head(features, *extra)` its trainable part ->
    (B, feature_dim), with extra = (attention_mask, token_type_ids) for text, (lengths,) for audio.
    `feature_width` is D, the width of `features`' output (the registry entry's `width`)."""

    inputs: tuple[str, ...] = ()
    feature_width: int

    def feature_parts(self) -> list[nn.Module]:
        """The modules `features` runs: frozen ones stay in eval mode and key the feature cache."""
        return []

    def named_weights(self) -> dict[str, NamedWeights]:
        """config.json's frozen_encoders keys -> the frozen weights a name rebuilds."""
        return {}

    def features(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def head(self, features: torch.Tensor, *extra) -> torch.Tensor:
        raise NotImplementedError

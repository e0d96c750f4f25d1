"""What every encoder's pretrained weights share: the error when they cannot be had, reading a
state dict safely, copying loaded weights into an encoder, and the sha256 a model folder names
them by. Each encoder's own loaders live in its module (`text`, `video`, `whisper`).

torch is imported by the functions that use them: the command line reports WeightsUnavailableError,
and `emosent --help` must not wait for torch."""

from __future__ import annotations

import hashlib
import pickle
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch
    from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that must come from a hub could not be had (usually: offline)."""


def resolve_hub() -> None:
    """Look up the Hugging Face Hub's address (socket.gaierror, an OSError, when offline): offline,
    huggingface_hub retries for ~20 s before giving up, and a failed DNS lookup fails at once."""
    from huggingface_hub import constants as hf_constants

    socket.getaddrinfo(urlparse(hf_constants.ENDPOINT).hostname, 443)


def weights_digest(modules: list[nn.Module]) -> str:
    """sha256 over the modules' weights and buffers, by name: identifies frozen weights."""
    import torch

    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def copy_weights(target: nn.Module, loaded: nn.Module) -> None:
    """Load `loaded`'s weights into `target`, leaving out what `target` lacks (R3D-18's own fc)."""
    wanted = target.state_dict().keys()
    target.load_state_dict({k: v for k, v in loaded.state_dict().items() if k in wanted})


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a .pth/.pt file without executing pickled code."""
    import torch
    from safetensors import SafetensorError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError) as err:
        # weights_only refuses pickled code; its message suggests weights_only=False, which we never do
        raise ValueError(f"{path}: not a plain tensor file ({err.__class__.__name__}); emosent reads only .safetensors "
                         "or a .pth holding a state dict of tensors (torch.save(model.state_dict(), ...)), and never "
                         "runs pickled code") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return state

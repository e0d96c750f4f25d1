"""The encoders, one module each (`text`, `video`, `audio`: the design's CNN, `whisper`), built by
name through `emosent.registry`; `base` says what the network needs of one, `weights` what their
pretrained weights share.

The names below keep the import paths of the one-module version (`from emosent.encoders import
load_text_encoder`). They are looked up on first use, so that the command line (which lists the
text encoders and reports WeightsUnavailableError) starts without torch, and importing one
submodule does not import transformers, torchvision and faster-whisper with the others.
"""

from __future__ import annotations

import importlib

from emosent.registry import DESIGN_TEXT_DEFAULTS, ENCODERS, FINETUNE_LR_TEXT, text_defaults

_HOME = {
    "load_text_encoder": "text",
    "R3D_FEATURES": "video", "VIDEO_TRANSFORM_WEIGHTS": "video", "build_r3d18": "video", "video_transform_weights": "video",
    "WeightsUnavailableError": "weights", "load_state_dict": "weights", "resolve_hub": "weights", "weights_digest": "weights",
    "load_whisper_base": "whisper", "whisper_base_dir": "whisper",
}
__all__ = [*_HOME, "DESIGN_TEXT_DEFAULTS", "FINETUNE_LR_TEXT", "TEXT_ENCODERS", "text_defaults"]

TEXT_ENCODERS = ENCODERS["text"]  # the registry's text entries (each with .defaults and .weights)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"emosent.encoders.{_HOME[name]}"), name)
    raise AttributeError(f"module 'emosent.encoders' has no attribute {name!r}")

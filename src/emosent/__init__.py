"""emosent: emotion and sentiment recognition in video.

`import emosent` is cheap: the label sets are here, everything else (the model, the configs, the
jobs) is imported on first use (PEP 562), so `emosent --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
import sys
import types

from emosent.labels import EMOTIONS, SENTIMENTS

__version__ = "0.1.0"

# name -> "module:attribute", imported on first use
LAZY = {
    "EmotionSentimentModel": "emosent.model:EmotionSentimentModel",
    "EmotionSentimentOutput": "emosent.model:EmotionSentimentOutput",
    "ModelConfig": "emosent.config:ModelConfig",
    "load_model": "emosent.builtin:load_model",
    "analyze": "emosent.analyze:analyze",
    "predict": "emosent.predict:predict",
    "train": "emosent.train:train",
    "evaluate": "emosent.evaluate:evaluate",
    "extract": "emosent.features:extract",
    "export": "emosent.export:export",
    "fuse": "emosent.fit:fuse",
    "adapt": "emosent.fit:adapt",
    "PretrainedModel": "emosent.pretrained:PretrainedModel",
    "LateFusionModel": "emosent.fusion:LateFusionModel",
}

__all__ = ["EMOTIONS", "SENTIMENTS", *LAZY]


def __getattr__(name: str):
    if name not in LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY})


class _Package(types.ModuleType):
    """Importing a submodule binds it on its package (`emosent.analyze` = the module): for the names
    in LAZY the package keeps the function instead, as whisper's `whisper.transcribe` is the function,
    whatever was imported first. The submodule itself stays in sys.modules (`from emosent.analyze
    import ...` is unchanged)."""

    def __setattr__(self, name: str, value) -> None:
        if name in LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

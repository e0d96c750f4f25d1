"""Models by name: the built-in model shipped inside the package, and model folders.

`load_model(None)` is what `emosent analyze VIDEO` uses when no --model is given: a late fusion
(see `emosent.fusion`) of a text expert trained on MELD, a voice expert trained on RAVDESS and the
FER2013 face network, rebuilt by `tools/build_builtin.py` from ../shared/data. Its MODEL_CARD.md
says what it was trained on, how well it does, its licence and its limits.
"""

from __future__ import annotations

from pathlib import Path

from emosent.fusion import FUSION_FILE, LateFusionModel
from emosent.model import EmotionSentimentModel

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_NAME = "builtin"


def resolve(model: str | Path | None) -> Path:
    """The folder a --model value names: None or "builtin" -> the packaged model."""
    if model is None or str(model) == BUILTIN_NAME:
        if not (BUILTIN_DIR / FUSION_FILE).is_file():
            raise FileNotFoundError(f"{BUILTIN_DIR}: the built-in model is missing from this installation; reinstall "
                                    "emosent, rebuild it with tools/build_builtin.py, or pass --model RUN_DIR/model")
        return BUILTIN_DIR
    return Path(model)


def load_model(model: str | Path | None = None) -> EmotionSentimentModel | LateFusionModel:
    """A model folder (written by `emosent train` or `export`), a late-fusion folder (fusion.json),
    or the built-in model (None / "builtin"), in eval mode."""
    directory = resolve(model)
    loaded = (LateFusionModel if (directory / FUSION_FILE).is_file() else EmotionSentimentModel).from_pretrained(directory)
    loaded.name_or_path = model_name(model)  # how results name it (after transformers' name_or_path)
    return loaded


def model_name(model: str | Path | None) -> str:
    """How a result names the model: "builtin" or the folder given."""
    return BUILTIN_NAME if model is None or str(model) == BUILTIN_NAME else str(model)


def describe_models() -> str:
    """What `emosent analyze --list-models` prints: the built-in model and how to use others."""
    import json

    lines = []
    path = BUILTIN_DIR / FUSION_FILE
    if path.is_file():
        card = json.loads(path.read_text()).get("card", {})
        lines.append(f"{BUILTIN_NAME} (default): {card.get('summary', 'the built-in model')}")
        for key in ("experts", "figures", "licence"):
            for line in card.get(key, []):
                lines.append(f"  {line}")
        lines.append(f"  model card: {BUILTIN_DIR / 'MODEL_CARD.md'}")
    else:
        lines.append(f"{BUILTIN_NAME}: missing from this installation ({BUILTIN_DIR})")
    lines.append("other models: --model RUN_DIR/model (emosent train) or a folder written by emosent export")
    return "\n".join(lines)

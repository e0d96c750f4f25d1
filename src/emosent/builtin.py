"""Models by name: `load_model` reads the built-in model shipped inside the package and every
model folder, whatever its model_type (see `emosent.pretrained`).

`load_model("builtin")` (or None) is what every command uses when no --model is given: a late
fusion (see `emosent.fusion`) of a text expert trained on MELD, a voice expert trained on RAVDESS
and the FER2013 face network, rebuilt by `tools/build_builtin.py` from ../shared/data with
`emosent.fit.fuse`. Its MODEL_CARD.md says what it was trained on, how well it does, its licence
and its limits.
"""

from __future__ import annotations

from pathlib import Path

from emosent import fusion  # noqa: F401  (registers the late_fusion and face_expression model types)
from emosent.pretrained import CONFIG_FILE, PretrainedModel, load_pretrained, read_config

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_NAME = "builtin"


def resolve(model: str | Path | None) -> Path:
    """The folder a --model value names: None or "builtin" -> the packaged model."""
    if model is None or str(model) == BUILTIN_NAME:
        if not (BUILTIN_DIR / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{BUILTIN_DIR}: the built-in model is missing from this installation; reinstall "
                                    "emosent, rebuild it with tools/build_builtin.py, or pass --model RUN_DIR/model")
        return BUILTIN_DIR
    return Path(model)


def load_model(model: str | Path | PretrainedModel | None = None) -> PretrainedModel:
    """A model folder (written by `emosent train`, `fuse` or `export`, any model_type), or the
    built-in model (None / "builtin"), in eval mode. A loaded model is returned as it is."""
    if isinstance(model, PretrainedModel):
        return model
    directory = resolve(model)
    loaded = load_pretrained(directory)
    loaded.name_or_path = model_name(model)  # how results name it (after transformers' name_or_path)
    return loaded


def model_name(model: str | Path | None) -> str:
    """How a result names the model: "builtin" or the folder given."""
    return BUILTIN_NAME if model is None or str(model) == BUILTIN_NAME else str(model)


def describe_models() -> str:
    """What `emosent analyze --list-models` prints: the built-in model and how to use others."""
    lines = []
    if (BUILTIN_DIR / CONFIG_FILE).is_file():
        card = read_config(BUILTIN_DIR, "late_fusion", "fusion")["fusion"].get("card", {})
        lines.append(f"{BUILTIN_NAME} (default): {card.get('summary', 'the built-in model')}")
        for key in ("experts", "figures", "licence"):
            for line in card.get(key, []):
                lines.append(f"  {line}")
        lines.append(f"  model card: {BUILTIN_DIR / 'MODEL_CARD.md'}")
    else:
        lines.append(f"{BUILTIN_NAME}: missing from this installation ({BUILTIN_DIR})")
    lines.append("other models: --model RUN_DIR/model (emosent train), or a folder written by emosent fuse or export")
    return "\n".join(lines)

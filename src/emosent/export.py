"""Copy a model, of any model type, into a new folder in today's format (which also converts an
older folder), optionally with the frozen encoders it names so that it loads anywhere offline."""

from __future__ import annotations

from pathlib import Path

from emosent.builtin import load_model, resolve
from emosent.pretrained import PretrainedModel, folder_size_mb


def export(model: str | Path | PretrainedModel | None, out: str | Path, *, self_contained: bool = False) -> tuple[Path, float]:
    """Write `model` (a folder, "builtin" / None, or a loaded model) to the new folder `out`;
    returns (out, its size in MB). `out` must not exist (or be empty) and must not lie inside the
    folder being read."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder; name a new folder for the copy")
    if not isinstance(model, PretrainedModel) and out.resolve().is_relative_to(resolve(model).resolve()):
        raise ValueError(f"--out {out}: inside the model folder being read; name a folder elsewhere")
    written = load_model(model).save_pretrained(out, include_frozen=self_contained)
    return written, folder_size_mb(written)

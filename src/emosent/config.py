"""Typed configuration for the model. Checkpoints store it as JSON and rebuild from it.

Configs read from files (a model folder's config.json) are checked by pydantic against the
dataclasses' own annotations, so a bad value fails at the boundary with the file and field named.
"""

from __future__ import annotations

import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

MODALITIES = ("text", "video", "audio")
POOLINGS = ("pooler", "mean")
DEFAULT_LR = {"text": 8e-6, "video": 8e-5, "audio": 8e-5, "fusion": 5e-4, "heads": 5e-4}  # the design's Adam groups

# Strict: JSON `true` is not a width and "64" is not a number.
Width = Annotated[int, Field(gt=0, strict=True)]
Probability = Annotated[float, Field(ge=0, lt=1, strict=True)]


@dataclass
class ModelConfig:
    """The network of ../shared/design/model-design.md; defaults are the design's.

    text_encoder: a name from `emosent.encoders.TEXT_ENCODERS` or a local Hugging Face model directory.
    video_weights: "kinetics400" (torchvision R3D_18_Weights.KINETICS400_V1), "none" (random),
        or a path to a local R3D-18 state-dict file (.pth or .safetensors).
    modalities: any non-empty subset of MODALITIES; the fusion input is feature_dim per modality.
    train_audio_conv: unfreeze the audio convolutions (the design freezes them).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    text_encoder: Annotated[str, Field(min_length=1, strict=True)] = "bert-base-uncased"
    pooling: str = "pooler"
    video_weights: Annotated[str, Field(min_length=1, strict=True)] = "kinetics400"
    modalities: tuple[str, ...] = MODALITIES
    feature_dim: Width = 128
    fusion_dim: Width = 256
    head_dim: Width = 64
    encoder_dropout: Probability = 0.2
    fusion_dropout: Probability = 0.3
    head_dropout: Probability = 0.2
    n_mels: Width = 64
    train_audio_conv: Annotated[bool, Field(strict=True)] = False
    extra: dict = field(default_factory=dict)  # free-form metadata carried into config.json

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(self.modalities)}")
        # JSON gives lists back; keep the canonical order so equal configs compare equal.
        self.modalities = tuple(m for m in MODALITIES if m in self.modalities)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str | Path) -> ModelConfig:
        """Checked construction from JSON data; errors name `source` and the field."""
        return validated(cls, data, source)


def validated(schema: type, data: Any, source: str | Path):
    """`schema` (a dataclass or pydantic model) built from `data`, or one ValueError line naming
    `source`, the first bad field and what it holds."""
    try:
        return TypeAdapter(schema).validate_python(data)
    except ValidationError as err:
        raise ValueError(f"{source}: {describe(err)}") from None


def describe(err: ValidationError) -> str:
    """The first error of a pydantic ValidationError as one line: where, what, and the value."""
    errors = err.errors(include_url=False)
    first = errors[0]
    where = ", ".join(f"item {p}" if isinstance(p, int) else str(p) for p in first["loc"]) or "the top level"
    ctx_error = (first.get("ctx") or {}).get("error")
    message = str(ctx_error) if ctx_error else first["msg"]
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        message = "unknown field (written by another version of emosent?)"
    got = "" if ctx_error else f", got {reprlib.repr(first['input'])}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {message}{got}{more}"


@dataclass
class TrainConfig:
    """The design's recipe; learning rates per parameter group."""

    epochs: int = 20
    batch_size: int = 32
    seed: int = 0
    lr: dict = field(default_factory=lambda: dict(DEFAULT_LR))
    weight_decay: float = 1e-5
    label_smoothing: float = 0.05
    grad_clip_norm: float = 1.0
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    num_workers: int = 2
    train_split: str = "train"
    val_split: str = "dev"

    def __post_init__(self) -> None:
        # Python callers get the same checks as the command line (see cli.py's option types).
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        bad = {k: v for k, v in self.lr.items() if not v > 0}
        if bad:
            raise ValueError(f"learning rates must be positive, got {bad}")


@dataclass
class Launch:
    """Where to run: passed to Lightning as is, so multi-GPU and multi-node DDP (torchrun, SLURM)
    need no code of ours."""

    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    strategy: str = "auto"

    def trainer_kwargs(self) -> dict:
        return asdict(self)

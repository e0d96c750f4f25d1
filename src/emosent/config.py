"""Typed configuration for the model. Checkpoints store it as JSON and rebuild from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODALITIES = ("text", "video", "audio")
POOLINGS = ("pooler", "mean")
DEFAULT_LR = {"text": 8e-6, "video": 8e-5, "audio": 8e-5, "fusion": 5e-4, "heads": 5e-4}  # the design's Adam groups


@dataclass
class ModelConfig:
    """The network of ../shared/design/model-design.md; defaults are the design's.

    text_encoder: a name from `emosent.encoders.TEXT_ENCODERS` or a local Hugging Face model directory.
    video_weights: "kinetics400" (torchvision R3D_18_Weights.KINETICS400_V1), "none" (random),
        or a path to a local R3D-18 state-dict file (.pth or .safetensors).
    modalities: any non-empty subset of MODALITIES; the fusion input is feature_dim per modality.
    train_audio_conv: unfreeze the audio convolutions (the design freezes them).
    """

    text_encoder: str = "bert-base-uncased"
    pooling: str = "pooler"
    video_weights: str = "kinetics400"
    modalities: tuple[str, ...] = MODALITIES
    feature_dim: int = 128
    fusion_dim: int = 256
    head_dim: int = 64
    encoder_dropout: float = 0.2
    fusion_dropout: float = 0.3
    head_dropout: float = 0.2
    n_mels: int = 64
    train_audio_conv: bool = False
    extra: dict = field(default_factory=dict)  # free-form metadata carried into config.json

    def __post_init__(self) -> None:
        # JSON gives lists back; keep the canonical order so equal configs compare equal.
        self.modalities = tuple(m for m in MODALITIES if m in self.modalities)
        if not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d


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

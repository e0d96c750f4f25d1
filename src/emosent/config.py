"""Typed configuration for the model. Checkpoints store it as JSON and rebuild from it.

Configs read from files (a model folder's config.json) are checked by pydantic against the
dataclasses' own annotations, so a bad value fails at the boundary with the file and field named.
"""

from __future__ import annotations

import argparse
import json
import math
import reprlib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from emosent.registry import MODALITIES, Names, encoder_spec, help_text

POOLINGS = ("pooler", "mean")
VIDEO_ENCODERS, AUDIO_ENCODERS = Names("video"), Names("audio")  # live: an encoder registered later is a choice too
CLASS_WEIGHTS = ("inverse", "sqrt", "none")
AUDIO_POOLINGS = ("all", "masked")
AUDIO_NORMS = ("none", "cmvn")
AUDIO_HEADS = ("mlp", "standardised-mlp", "linear")
WHISPER_LAYERS = 6  # Whisper-base's encoder layers (emosent.encoders.whisper imports torch; this module does not)
MONITORS = ("val/loss", *(f"val/{task}/{m}" for task in ("emotion", "sentiment") for m in ("weighted_f1", "macro_f1", "accuracy")))
# The design's Adam groups. "text": None takes the text encoder's default from its registry entry
# (emosent.registry: 8e-6 for bert-base-uncased, the design's); "audio": None takes DESIGN_LR_AUDIO,
# TRAIN_CONV_LR_AUDIO when the audio convolutions train, or the audio encoder's own (see audio_lr).
DEFAULT_LR = {"text": None, "video": 8e-5, "audio": None, "fusion": 5e-4, "heads": 5e-4}
DESIGN_LR_AUDIO = 8e-5  # the design's: only the projection trains
TRAIN_CONV_LR_AUDIO = 1e-3  # --train-audio-conv: convolutions trained from random initialisation, Adam's usual rate

# Strict: JSON `true` is not a width and "64" is not a number.
Width = Annotated[int, Field(gt=0, strict=True)]
Probability = Annotated[float, Field(ge=0, lt=1, strict=True)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
MAX_SEED = 2**32 - 1  # numpy's limit; Lightning replaces a seed outside it with a random one


@dataclass(frozen=True)
class Number:
    """A numeric option's type and bounds: `kind` (int or float), finite, >= minimum (> minimum
    with above=True), < below. Parses command-line text (argparse's `type=`) and checks values
    Python callers pass (`check_fields`), with the same words."""

    kind: type
    minimum: float | None = None
    above: bool = False
    below: float | None = None

    def problem(self, value) -> str | None:
        if not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum):
            return f"must be {'more than' if self.above else 'at least'} {self.minimum:g}, got {value}"
        if self.below is not None and value >= self.below:
            return f"must be less than {self.below:{'d' if self.kind is int else 'g'}}, got {value}"
        return None

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if self.kind is int else 'a number'}, got {text!r}") from None
        if (problem := self.problem(value)) is not None:
            raise argparse.ArgumentTypeError(problem if math.isfinite(value) else f"expected a finite number, got {text!r}")
        return value


COUNT = Number(int, 1)  # epochs, batch sizes, rows, frames, nodes
WORKERS = Number(int, 0)
SEED = Number(int, 0, below=MAX_SEED + 1)
RATE = Number(float, 0, above=True)  # learning rates, seconds, decibels
PORT = Number(int, 0, below=65536)  # TCP ports; 0 picks a free one
# Segments or rows per forward pass when predicting, analysing or serving: memory grows with it
# (R3D-18's activations, the decoded clips of a batch), so it is bounded: predict's peak RSS at
# 64 was 7.4 GB with an R3D-18 model and 2 loader workers, against 3.7 GB at 8 (BENCHMARKS.md).
MAX_BATCH_SIZE = 64
BATCH = Number(int, 1, below=MAX_BATCH_SIZE + 1)


def option(help: str, type: Number | None = None, choices: tuple | None = None) -> dict:
    """dataclass field metadata that makes the field a command-line option (see emosent.cli)."""
    return {"help": help, "type": type, "choices": choices}


def check_fields(config) -> None:
    """The option bounds of a config's fields, for Python callers (the CLI checks them in argparse)."""
    for f in fields(config):
        kind = f.metadata.get("type")
        value = getattr(config, f.name)
        if isinstance(kind, Number) and (problem := kind.problem(value)) is not None:
            raise ValueError(f"{f.name} {problem}")
        if f.metadata.get("choices") and value is not None and value not in f.metadata["choices"]:
            raise ValueError(f"{f.name} must be one of {f.metadata['choices']}, got {value!r}")


def default_of(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


@dataclass
class ModelConfig:
    """The network of ../shared/design/model-design.md; defaults are the design's.

    text_encoder: a text encoder's name in `emosent.registry` or a local Hugging Face model directory.
    video_weights: "kinetics400" (torchvision R3D_18_Weights.KINETICS400_V1), "none" (random),
        or a path to a local R3D-18 state-dict file (.pth or .safetensors).
    modalities: any non-empty subset of MODALITIES; the fusion input is feature_dim per modality.
    train_audio_conv: unfreeze the audio convolutions (the design freezes them); the cache then holds
        the log-mel and the convolutions run in the audio head.
    audio_pooling: "all" (the design: AdaptiveAvgPool1d over every spectrogram frame, padding
        included) or "masked" (the mean over the frames computed from the clip's real audio only).
    audio_augment: SpecAugment-style masking, gain and noise on the log-mel in train mode, where
        the audio convolutions train (never in eval mode, never with frozen convolutions).
    audio_layer, audio_norm (whisper-base only): which encoder layer's output is pooled, and
        whether each mel band's mean over the clip is removed first (bench/voice.py).
    audio_head (whisper-base): "mlp" (the design's projection, fusion block and hidden head layers),
        "standardised-mlp" (the same on the pooled features z-scored with the training set's
        statistics) or, for a model of audio alone, "linear": the z-scored features and one Linear
        per task, a multinomial logistic regression (bench/voice.py, BENCHMARKS.md).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    text_encoder: Annotated[str, Field(min_length=1, strict=True)] = field(default="bert-base-uncased", metadata=option(
        "bert-base-uncased (the design; needs internet once), minilm (offline), mpnet (offline, an optional extra), tiny "
        "(tests), or a local HF model dir"))
    pooling: str | None = field(default=None, metadata=option(
        "text pooling, pooler or mean; default: the text encoder's (pooler for bert-base-uncased, the design; mean for minilm and mpnet)",
        choices=POOLINGS))
    video_weights: Annotated[str, Field(min_length=1, strict=True)] = field(default="kinetics400", metadata=option(
        "kinetics400 (the design; needs internet once), none (random), or a local R3D-18 state-dict file"))
    video_encoder: str = field(default="r3d18", metadata=option(help_text("video"), choices=VIDEO_ENCODERS))
    modalities: tuple[str, ...] = field(default=MODALITIES, metadata=option("comma-separated subset of text,video,audio"))
    feature_dim: Width = 128
    fusion_dim: Width = 256
    head_dim: Width = 64
    encoder_dropout: Probability = 0.2
    fusion_dropout: Probability = 0.3
    head_dropout: Probability = 0.2
    finetune_text_layers: Annotated[int, Field(ge=0, strict=True)] = field(default=0, metadata=option(
        "train the top N transformer layers of the text encoder (and its pooler, where used) at the text learning rate; "
        "0: frozen (the design)", WORKERS))
    train_audio_conv: Annotated[bool, Field(strict=True)] = field(default=False, metadata=option(
        "train the audio convolutions (the design freezes them); the log-mel is cached and the convolutions run "
        "each epoch, at --lr-audio (default then 1e-3)"))
    audio_encoder: str = field(default="cnn", metadata=option(help_text("audio"), choices=AUDIO_ENCODERS))
    audio_pooling: str = field(default="all", metadata=option(
        "audio pooling over time: all frames, padding included (the design), or masked: the clip's real frames only",
        choices=AUDIO_POOLINGS))
    audio_augment: Annotated[bool, Field(strict=True)] = field(default=True, metadata=option(
        "with --train-audio-conv: SpecAugment-style time and frequency masks, random gain and noise on the log-mel "
        "in training (never at evaluation); --no-audio-augment turns it off"))
    audio_layer: Annotated[int, Field(ge=1, le=WHISPER_LAYERS, strict=True)] = field(default=WHISPER_LAYERS, metadata=option(
        f"--audio-encoder whisper-base: the encoder's output after this layer, 1-{WHISPER_LAYERS} ({WHISPER_LAYERS}: "
        "the last; middle layers carry more of the voice and less of the words)", Number(int, 1, below=WHISPER_LAYERS + 1)))
    audio_norm: str = field(default="none", metadata=option(
        "--audio-encoder whisper-base: cmvn removes each mel band's mean over the clip before the encoder (a fixed "
        "microphone and room colouring); none: Whisper's log-mel as it is", choices=AUDIO_NORMS))
    audio_head: str = field(default="mlp", metadata=option(
        "--audio-encoder whisper-base: mlp (projection, fusion and hidden head layers, the design); standardised-mlp: "
        "the same on the pooled features z-scored with the training set's statistics; linear (--modalities audio "
        "only): the z-scored features, then one linear layer per task. Both z-scored heads generalise better to new "
        "speakers and sentences (BENCHMARKS.md)", choices=AUDIO_HEADS))
    extra: dict = field(default_factory=dict)  # free-form metadata carried into config.json

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(self.modalities)}")
        # JSON gives lists back; keep the canonical order so equal configs compare equal.
        self.modalities = tuple(m for m in MODALITIES if m in self.modalities)
        for modality in ("video", "audio"):  # first: an unknown name says how to register one
            encoder_spec(modality, self.encoder(modality))
        check_fields(self)
        whisper_only = {"audio_layer": WHISPER_LAYERS, "audio_norm": "none", "audio_head": "mlp"}
        if "audio" in self.modalities and self.audio_encoder != "whisper-base":
            for name, default in whisper_only.items():
                if getattr(self, name) != default:
                    raise ValueError(f"{name} is a setting of the whisper-base audio encoder, not of {self.audio_encoder!r}: "
                                     f"leave it at {default!r} or use audio_encoder 'whisper-base'")
        if self.audio_head == "linear" and self.modalities != ("audio",):
            # a linear head has no fusion block to join other modalities' features: it is a voice expert's
            raise ValueError(f"audio_head 'linear' is for a model of audio alone, got modalities {list(self.modalities)}: "
                             "use modalities ['audio'] (a late fusion joins it with the other experts) or audio_head 'mlp'")

    def encoder(self, modality: str) -> str:
        """The name of the encoder of `modality` (a text encoder may be a folder)."""
        return {"text": self.text_encoder, "video": self.video_encoder, "audio": self.audio_encoder}[modality]

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


def read_json_object(path: Path, key: str) -> dict:
    """The object in a JSON file emosent wrote, which must hold the object `key`; one ValueError
    line naming the file otherwise."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore the file written by emosent train") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(key), dict):
        raise ValueError(f'{path}: expected an object with "{key}"; restore the file written by emosent train')
    return meta


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


@dataclass(frozen=True)
class ProcessorConfig:
    """Every preprocessing setting: what `emosent.processor.Processor` makes of an utterance.
    Saved as processor.json beside a model, so a model always receives what it was trained on.
    Defaults are the design's (16 frames of 112x112; a 64-band log-mel of 9.6 s at 16 kHz)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    num_frames: PositiveInt = field(default=16, metadata=option("video frames sampled per clip", COUNT))
    frame_size: PositiveInt = field(default=112, metadata=option(
        "side of the square frame crop in pixels; frames are first resized to 128/112 and 171/112 of it", COUNT))
    frame_transforms: str = field(default="kinetics400", metadata=option(
        "whose frame normalisation (mean/std) to use: the torchvision video weights named", choices=("kinetics400",)))
    # 0.1: on the real photos of bench/faces.py wider crops (0.2, 0.3) lose 4-5 points (BENCHMARKS.md)
    face_margin: Annotated[float, Field(ge=0)] = field(default=0.1, metadata=option(
        "--video-encoder face: the face crop is the detected box's longer side times 1 + this", Number(float, 0)))
    face_detect_size: PositiveInt = field(default=320, metadata=option(
        "--video-encoder face: frames are scaled down to at most this many pixels on their long side for face detection", COUNT))
    sample_rate_hz: PositiveInt = field(default=16_000, metadata=option("audio is resampled to this rate", COUNT))
    n_mels: PositiveInt = field(default=64, metadata=option("mel bands of the spectrogram", COUNT))
    n_fft: PositiveInt = field(default=1024, metadata=option("FFT window in samples (1024 = 64 ms at 16 kHz)", COUNT))
    hop_length: PositiveInt = field(default=512, metadata=option("hop between spectrogram frames in samples", COUNT))
    audio_window_s: PositiveFloat = field(default=9.6, metadata=option(
        "seconds of audio per utterance: longer is cut, shorter padded (the spectrogram's width)", RATE))
    top_db: PositiveFloat = field(default=80.0, metadata=option("dynamic range kept below a clip's loudest bin, in dB", RATE))
    max_tokens: PositiveInt = field(default=128, metadata=option("text is cut to this many tokens", COUNT))
    context: Annotated[int, Field(ge=0, strict=True)] = field(default=0, metadata=option(
        "earlier utterances of the same dialogue (with speakers) the text encoder reads beside the current one; "
        "0: the utterance alone (the design)", WORKERS))

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def mel_frames(self) -> int:
        """F: spectrogram frames per clip (300 for the defaults)."""
        return max(1, round(self.audio_window_s * self.sample_rate_hz / self.hop_length))

    @property
    def frame_resize(self) -> tuple[int, int]:
        """(height, width) before the centre crop: torchvision's R3D-18 recipe, (128, 171) for 112."""
        return round(self.frame_size * 128 / 112), round(self.frame_size * 171 / 112)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path) -> ProcessorConfig:
        return validated(cls, data, source)


@dataclass
class TrainConfig:
    """The design's recipe; learning rates per parameter group."""

    epochs: int = field(default=20, metadata=option("passes over the training split", COUNT))
    batch_size: int = field(default=32, metadata=option("examples per step", COUNT))
    seed: int = field(default=0, metadata=option("fixes initialisation, data order and dropout", SEED))
    lr: dict = field(default_factory=lambda: dict(DEFAULT_LR))
    weight_decay: float = field(default=1e-5, metadata=option("Adam's weight decay", Number(float, 0)))
    label_smoothing: float = field(default=0.05, metadata=option("label smoothing of both losses", Number(float, 0, below=1)))
    grad_clip_norm: float = field(default=1.0, metadata=option("gradient norm clipping", RATE))
    plateau_factor: float = field(default=0.1, metadata=option(
        "ReduceLROnPlateau: multiply the learning rates by this", Number(float, 0, above=True, below=1)))
    class_weights: str = field(default="inverse", metadata=option(
        "loss weights per class: inverse frequency (the design), sqrt (milder), none", choices=CLASS_WEIGHTS))
    monitor: str = field(default="val/loss", metadata=option(
        "the validation figure that picks the exported checkpoint (lowest loss, highest metric)", choices=MONITORS))
    plateau_patience: int = field(default=2, metadata=option("ReduceLROnPlateau: epochs without improvement", WORKERS))
    num_workers: int = field(default=2, metadata=option("data loader processes", WORKERS))
    train_split: str = "train"
    val_split: str = "dev"

    def __post_init__(self) -> None:
        # Python callers get the same checks as the command line (see cli.py's option types).
        check_fields(self)
        bad = {k: v for k, v in self.lr.items() if v is not None and not v > 0}
        if bad:
            raise ValueError(f"learning rates must be positive, got {bad}")


def audio_lr(config: ModelConfig) -> float:
    """The audio learning rate when the user gives none: TRAIN_CONV_LR_AUDIO when the audio
    convolutions train, else the audio encoder's own default (whisper-base's: a linear probe's),
    else the design's for its frozen convolutions."""
    if config.train_audio_conv:
        return TRAIN_CONV_LR_AUDIO
    return encoder_spec("audio", config.audio_encoder).defaults.get("lr_audio", DESIGN_LR_AUDIO)


def devices(text: str) -> int | str:
    """--devices: auto, a count, or a comma-separated list of device ids (as Lightning takes them)."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if all(part.strip().isdigit() for part in text.split(",")) and "," in text:
        return text
    raise argparse.ArgumentTypeError(f"expected auto, a number of devices (1 or more) or ids like 0,1; got {text!r}")


@dataclass
class Launch:
    """Where to run: passed to Lightning as is, so multi-GPU and multi-node DDP (torchrun, SLURM)
    need no code of ours."""

    accelerator: str = field(default="auto", metadata=option("auto, cpu, gpu, ..."))
    devices: str | int = field(default="auto", metadata=option("number of devices per node, ids like 0,1, or auto", devices))
    num_nodes: int = field(default=1, metadata=option("machines", COUNT))
    strategy: str = field(default="auto", metadata=option("auto, ddp, ... (multi-GPU / multi-node: ddp)"))

    def trainer_kwargs(self) -> dict:
        return asdict(self)


BYTES_PER_MB = 1_000_000


@dataclass(frozen=True)
class ServeConfig:
    """`emosent serve`: where the service keeps its jobs, its limits (each an option of that name),
    and its API token (when set, /v1 needs "Authorization: Bearer TOKEN")."""

    data_dir: Path
    max_upload_mb: float = field(default=500.0, metadata=option("largest request, video and subtitles together, in MB", RATE))
    queue_size: int = field(default=16, metadata=option("jobs that may wait beyond those running; more are refused with 503", COUNT))
    workers: int = field(default=1, metadata=option("analyses at once, sharing one loaded model", COUNT))
    batch_size: int = field(default=8, metadata=option(f"segments per forward pass (at most {MAX_BATCH_SIZE})", BATCH))
    device: str = field(default="auto", metadata=option("auto (GPU if there is one), cpu, cuda, cuda:1, ..."))
    upload_timeout_s: float = field(default=300.0, metadata=option(
        "seconds an upload may take to arrive; a slower one gets 408 and frees its queue place", RATE))
    allowed_hosts: str | None = field(default=None, metadata=option(
        "Host names the service answers to, comma-separated (*.example.org patterns; * for any), e.g. the public name "
        "behind a proxy (default: localhost, 127.0.0.1, ::1 and the --host address; any host on 0.0.0.0 or ::)"))
    token: str | None = None

    def __post_init__(self):
        check_fields(self)

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * BYTES_PER_MB)

"""The one model abstraction and the one model folder format (after transformers' PreTrainedModel
and AutoModel).

A model folder holds config.json, whose "model_type" names the class that reads the folder:

* "multimodal": the network of ../shared/design/model-design.md (`emosent.model`), with
  processor.json, the tokenizer and model.safetensors beside it;
* "late_fusion": experts of one modality each, every expert a model folder of its own in a
  subfolder, fused by calibrated weights (`emosent.fusion`);
* "face_expression": the packaged FER2013 network read as an expert (`emosent.fusion`).

Every model type subclasses `PretrainedModel` (one contract: `processor`, `modalities`,
`encode`, `forward`, `save_pretrained`, `from_pretrained`) and registers under its model_type, so
`load_pretrained(folder)` reads any of them, and a late fusion loads its experts the same way.

Older folders still load: config.json without "model_type" (formats 1 and 2) is a "multimodal"
model; a folder with fusion.json (the late fusion of emosent 0.1's built-in model) is read as a
"late_fusion" model, and `emosent export` writes it in this format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from emosent.config import ModelConfig, read_json_object
from emosent.encoders.weights import WeightsUnavailableError, weights_digest
from emosent.files import write_atomically
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.registry import how_to_get

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROCESSOR_FILE = "processor.json"  # the processor's settings (see emosent.processor)
TOKENIZER_DIR = "text_encoder"  # the tokenizer's files (and the text backbone's config)
# What a saved (fast) tokenizer needs: without tokenizer.json transformers still builds one, with
# an empty vocabulary that reads every word as [UNK] and changes every answer without a warning.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
FOLDER_FORMAT = 3  # 3: "model_type" in config.json; 2: processor.json beside it; 1: everything in one file
LEGACY_FUSION_FILE = "fusion.json"  # emosent 0.1's late-fusion folder
MODEL_TYPES: dict[str, type[PretrainedModel]] = {}


class PretrainedModel(nn.Module):
    """What every emosent model is: a network with its own `processor` (utterances -> batches),
    `modalities`, `encode(batch)` (raw inputs -> the frozen parts' features), `forward(**inputs)`
    -> `EmotionSentimentOutput`, and its folder (`save_pretrained` / `from_pretrained`).
    `name_or_path` is how results name it ("builtin" or the folder it came from)."""

    model_type: ClassVar[str]
    name_or_path: str | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:
            MODEL_TYPES[cls.model_type] = cls

    @property
    def modalities(self) -> tuple[str, ...]:
        raise NotImplementedError

    def stream_warnings(self, path: str | Path, has_video: bool, has_audio: bool) -> list[str]:
        """What a file without a video or audio stream means for this model: warnings true of it,
        or MediaError where it cannot read the file at all. A model cannot leave out a video
        input (it refuses the file) and reads missing audio as silence, unless audio is all it reads."""
        from emosent.data.media import MediaError

        if "video" in self.modalities and not has_video:
            raise MediaError(path, "no video stream", "this model reads frames; analyse a video file")
        if "audio" in self.modalities and not has_audio:
            if self.modalities == ("audio",):
                raise MediaError(path, "no audio stream", "this model reads speech; analyse a file with sound")
            return [f"{path}: no audio stream: the audio input is silence"]
        return []

    def save_pretrained(self, directory: str | Path, *, include_frozen: bool = False) -> Path:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PretrainedModel:
        raise NotImplementedError


def model_type_of(directory: Path) -> tuple[str, dict]:
    """(model_type, config.json's content) of a model folder; one line naming the file otherwise."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        if (directory / LEGACY_FUSION_FILE).is_file():
            return "late_fusion", {}
        hint = f"; did you mean {directory / 'model'}?" if (directory / "model" / CONFIG_FILE).is_file() else ""
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such model folder; give a folder written by emosent train, "
                                    f"fuse or export, or builtin{hint}")
        raise FileNotFoundError(f"{path} not found: expected a model folder written by emosent train, fuse or export{hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore the file written by emosent") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object; restore the file written by emosent")
    model_type = meta.get("model_type", "multimodal")  # formats 1 and 2 knew one model type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not one this version reads "
                         f"({', '.join(sorted(MODEL_TYPES))}); use the emosent version that wrote it")
    return model_type, meta


def load_pretrained(directory: str | Path) -> PretrainedModel:
    """The model in a folder, whatever its model_type, in eval mode (see the module docstring)."""
    directory = Path(directory)
    model_type, _ = model_type_of(directory)
    return MODEL_TYPES[model_type].from_pretrained(directory)


def read_config(directory: Path, model_type: str, key: str) -> dict:
    """config.json of a folder of `model_type`, which must hold the object `key`, with emosent's labels."""
    path = directory / CONFIG_FILE
    meta = read_json_object(path, key)
    found = meta.get("model_type", "multimodal")
    if found != model_type:
        raise ValueError(f"{path}: model_type {found!r}, expected {model_type!r}")
    if meta.get("emotions") != list(EMOTIONS) or meta.get("sentiments") != list(SENTIMENTS):
        raise ValueError(f"{path}: label names differ from this version's {EMOTIONS} / {SENTIMENTS}")
    return meta


def write_config(directory: Path, model_type: str, body: dict) -> None:
    """config.json: the format, the model type, the label names and the model's own entries."""
    meta = {"format": FOLDER_FORMAT, "model_type": model_type, "emotions": list(EMOTIONS), "sentiments": list(SENTIMENTS), **body}
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    write_atomically(directory / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def load_named_encoder(model: nn.Module, key: str, ref: dict, config_path: Path) -> None:
    """Load the frozen encoder a model folder names (a key of its frozen_encoders) into the model
    (one with `named_weights()`, see `emosent.encoders.base.NamedWeights`), and check the sha256
    of its frozen parts."""
    source, expected = ref["source"], ref["sha256"]
    what = f"{config_path} names the {key} encoder {source!r} (sha256 {expected[:12]})"
    named = model.named_weights().get(key)
    if named is None:
        raise ValueError(f"{what}, but its model_config has no encoder whose weights go by that name; "
                         "the file was edited or comes from another version: restore the folder written by emosent")
    remedy = f"{how_to_get(key, source)}, or use a self-contained copy of the model (emosent export --self-contained, made where it is at hand)"
    try:
        named.load(source)
    except (WeightsUnavailableError, ValueError, OSError, RuntimeError) as err:
        raise ValueError(f"{what}, which cannot be loaded here ({' '.join(str(err).split())[:240]}); {remedy}") from None
    found = named.sha256 or weights_digest(named.modules)  # a fixed sha256 is checked as the weights load
    if found != expected:
        raise ValueError(f"{what}, but the one found here differs (sha256 {found[:12]}); {remedy}")


def state_keys(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    """The state_dict keys of `modules`, submodules of `model`."""
    prefixes = {id(m): name for name, m in model.named_modules()}
    return {f"{prefixes[id(m)]}.{k}" for m in modules for k in m.state_dict()}


def read_model_config(directory: Path) -> tuple[ModelConfig, dict]:
    """The checked ModelConfig of a model folder's config.json, and the file's whole content."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        hint = f"; did you mean {directory / 'model'}?" if (directory / "model" / CONFIG_FILE).is_file() else ""
        raise FileNotFoundError(f"{config_path} not found: expected a model directory written by emosent train{hint}")
    meta = read_config(directory, "multimodal", "model_config")
    fields = dict(meta["model_config"])
    if "format" not in meta:
        fields.pop("n_mels", None)  # format 1 kept it here; it is a processor setting now
    elif meta["format"] not in (2, FOLDER_FORMAT):
        raise ValueError(f"{config_path}: folder format {meta['format']!r}, but this version reads {FOLDER_FORMAT}; "
                         "use the emosent version that wrote it")
    if not (directory / PROCESSOR_FILE).is_file() and "format" in meta:
        raise FileNotFoundError(f"{directory / PROCESSOR_FILE} not found: the model folder is incomplete; copy the whole folder")
    return ModelConfig.from_dict(fields, f"{config_path}: model_config"), meta


def require_parts(directory: Path, *names: str) -> None:
    """FileNotFoundError naming the first of `names` (paths inside the model folder `directory`)
    that is missing: a folder that lost a part fails at load, not with silently different answers."""
    for name in names:
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} not found: the model folder is incomplete; "
                                    "copy the whole folder written by emosent")


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (safetensors carries no checksum: a corrupted file
    loads and would turn every answer into NaN)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name} holds NaN or infinite values; the file is corrupt: copy the model again")


def finite_positive(value, what: str, path: Path, *, zero: bool = False) -> float:
    """A number from a model folder's config: finite and > 0 (>= 0 with zero=True)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{path}: {what} must be a finite number {bound}, got {value!r}")
    return float(value)


def folder_size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6

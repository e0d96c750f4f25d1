"""The multimodal network of ../shared/design/model-design.md, read top-down.

Three encoders (text, video, audio), each a frozen part followed by a trainable head that maps
to `feature_dim`; concatenation; a fusion block; one head per task. Every encoder exposes its
frozen part as `features(...)` and its trainable part as `head(...)`, so cached frozen outputs
(see `emosent.features`) flow through exactly the same trainable layers as raw inputs.

Letters: B batch, T frames, L tokens, M mel bins, F spectrogram frames, H text hidden width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file
from torch import nn

from emosent.config import ModelConfig, ProcessorConfig, read_json_object
from emosent.encoders import (
    R3D_FEATURES,
    TEXT_ENCODERS,
    WHISPER_BASE_SHA256,
    WHISPER_HOW_TO_GET,
    VIDEO_HOW_TO_GET,
    WeightsUnavailableError,
    build_r3d18,
    encoder_source,
    load_text_encoder,
    load_whisper_base,
    text_defaults,
    text_encoder_by_name,
    video_weights_by_name,
    weights_digest,
)
from emosent.data.faces import FACE_SIZE
from emosent.fer_network import FER_CLASSES, MiniXception, load_fer_network
from emosent.files import write_atomically
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.pretrained import CONFIG_FILE, FOLDER_FORMAT, WEIGHTS_FILE, PretrainedModel, check_finite
from emosent.processor import PROCESSOR_FILE, TOKENIZER_DIR, Processor, load_tokenizer, read_processor_config

AUDIO_CONV_FEATURES = 128
FACE_PENULTIMATE = 128  # width of the FER2013 network's last block
FER_CHUNK = 32  # face crops per pass of the FER2013 network: its activations then stay in the CPU's cache (2x faster than 256)
FACE_SOURCE = "fer2013-mini-xception"  # how config.json names the packaged face-expression network
WHISPER_WIDTH = 512  # Whisper-base's encoder width


class TextEncoder(nn.Module):
    """(B, L) token ids, mask and token types -> (B, feature_dim): a transformer, frozen except for
    its top `finetune_layers` layers (and the pooler, where used), then a trainable projection.

    `features` runs the frozen part: the pooled output (B, H) when nothing inside the transformer
    trains (the design), else the hidden states at the frozen/trainable boundary (B, L, H), which
    `head` takes through the top layers, the pooling and the projection. Either way the frozen
    part's output can be cached. With token_type_ids (dialogue context: 0 marks the utterance, 1
    its context), mean pooling averages the utterance's tokens only.
    """

    def __init__(self, backbone: nn.Module, pooling: str, out_dim: int, finetune_layers: int = 0):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.pooling, self.finetune_layers = pooling, finetune_layers
        self.feature_width = backbone.config.hidden_size  # H
        if finetune_layers:
            layers = transformer_layers(backbone)
            if finetune_layers > len(layers):
                raise ValueError(f"--finetune-text-layers {finetune_layers}: this text encoder has {len(layers)} layers")
            layers[len(layers) - finetune_layers:].requires_grad_(True)
            if pooling == "pooler" and getattr(backbone, "pooler", None) is not None:
                backbone.pooler.requires_grad_(True)
        self.projection = nn.Linear(self.feature_width, out_dim)

    def feature_parts(self) -> list[nn.Module]:
        """The modules `features` runs: never trained, so kept in eval mode and cacheable."""
        if not self.finetune_layers:
            return [self.backbone]
        layers = self.backbone.encoder.layer
        return [self.backbone.embeddings, *layers[: len(layers) - self.finetune_layers]]

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) x 3 -> (B, H) pooled, or (B, L, H) boundary hidden states when the top layers train."""
        if not self.finetune_layers:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return self.pool(out.last_hidden_state, out.pooler_output, attention_mask, token_type_ids)
        hidden = self.backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, L, H)
        return self.run_layers(hidden, attention_mask, top=False)

    def head(self, features: torch.Tensor, attention_mask: torch.Tensor | None = None,
             token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.finetune_layers:
            hidden = self.run_layers(features, attention_mask, top=True)  # (B, L, H)
            pooler = getattr(self.backbone, "pooler", None)
            features = self.pool(hidden, pooler(hidden) if pooler is not None else None, attention_mask, token_type_ids)
        return self.projection(features)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, *, top: bool) -> torch.Tensor:
        """The transformer layers below the boundary (top=False) or above it, as the backbone's own
        forward runs them (its attention-mask format; BERT-style encoders)."""
        layers = self.backbone.encoder.layer
        cut = len(layers) - self.finetune_layers
        # transformers' own mask preparation (pinned version): the format its attention implementation expects
        mask, _ = self.backbone._create_attention_masks(attention_mask=attention_mask, encoder_attention_mask=None,
                                                        embedding_output=hidden, encoder_hidden_states=None, past_key_values=None)
        for layer in layers[cut:] if top else layers[:cut]:
            hidden = layer(hidden, attention_mask=mask)
        return hidden

    def pool(self, hidden: torch.Tensor, pooler_output: torch.Tensor | None, attention_mask: torch.Tensor,
             token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """(B, L, H) -> (B, H): the pooler output, or the masked mean over the utterance's tokens."""
        if self.pooling == "pooler":
            if pooler_output is None:
                raise ValueError("this text encoder has no pooler layer: use pooling='mean'")
            return pooler_output
        mask = attention_mask if token_type_ids is None else attention_mask * (token_type_ids == 0)
        mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, token_type_ids), attention_mask, token_type_ids)


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """A BERT-style encoder's layer stack, or a clear error for one whose top cannot be trained apart."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(backbone, "embeddings") or not hasattr(backbone, "_create_attention_masks"):
        raise ValueError(f"--finetune-text-layers: not supported for {type(backbone).__name__} (a BERT-style encoder is needed)")
    return layers


class FaceExpressions(nn.Module):
    """(B, T, 1, 64, 64) face crops and their (B, T) mask -> (B, 128 + 7 + 1): the frozen FER2013
    network's penultimate activations and its 7 logits, each averaged over the crop and its mirror
    image (expressions are left-right symmetric; the network was trained with flips) and over the
    frames that have a face, and the share of frames that have one (0: no face in the clip)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        # channels-last: the CPU's vectorised convolution and pooling kernels (5x faster in chunks
        # of FER_CHUNK crops, same outputs within 1e-5); state_dict and digests are unchanged
        self.network = network.requires_grad_(False).to(memory_format=torch.channels_last)
        self.width = FACE_PENULTIMATE + len(FER_CLASSES) + 1

    def forward(self, faces: torch.Tensor, face_mask: torch.Tensor) -> torch.Tensor:
        b, t = face_mask.shape
        found = face_mask.flatten()  # only the frames with a face go through the network: the rest weigh 0
        crops = faces.flatten(0, 1)[found]  # (N, 1, 64, 64)
        n = len(crops)
        per_frame = faces.new_zeros(b * t, self.width - 1)
        if n:
            both = torch.cat([torch.cat(self.network.penultimate_and_logits(chunk), 1)  # (2N, 128 + 7)
                              for chunk in torch.cat([crops, crops.flip(-1)]).split(FER_CHUNK)])
            per_frame[found] = (both[:n] + both[n:]) / 2
        per_frame = per_frame.view(b, t, -1)  # (B, T, 128 + 7)
        weights = face_mask.to(per_frame.dtype).unsqueeze(-1)  # (B, T, 1)
        count = weights.sum(1)  # (B, 1)
        pooled = (per_frame * weights).sum(1) / count.clamp(min=1.0)
        return torch.cat([pooled, count / t], 1)


class VideoEncoder(nn.Module):
    """Frames -> (B, feature_dim) through R3D-18 over whole frames, the FER2013 network over face
    crops (`--video-encoder face`), or both, each frozen; then one trainable block.

    R3D-18: (B, T, 3, 112, 112) normalised frames -> its pooled (B, 512). The design replaces
    `backbone.fc` with Linear(512, 128)+ReLU+Dropout(0.2). We set `backbone.fc = Identity` and
    keep that block as `self.fc`: the same function, but the frozen pooled 512-d features become
    reachable for caching. Faces: see `FaceExpressions`; a clip without any face gets a learned
    "no face" vector in place of its (empty) face features.
    """

    def __init__(self, backbone: nn.Module | None, face_network: nn.Module | None, out_dim: int, dropout: float):
        super().__init__()
        width = 0
        if backbone is not None:
            backbone.fc = nn.Identity()
            self.backbone = backbone.requires_grad_(False)
            width += R3D_FEATURES
        if face_network is not None:
            self.face = FaceExpressions(face_network)
            self.no_face = nn.Parameter(torch.zeros(self.face.width - 1))
            width += self.face.width
        self.feature_width = width
        self.fc = nn.Sequential(nn.Linear(width, out_dim), nn.ReLU(), nn.Dropout(dropout))

    @property
    def inputs(self) -> tuple[str, ...]:
        """The batch entries `features` takes."""
        return (*(("video",) if hasattr(self, "backbone") else ()), *(("faces", "face_mask") if hasattr(self, "face") else ()))

    def feature_parts(self) -> list[nn.Module]:
        return [m for m in (getattr(self, "backbone", None), getattr(self, "face", None)) if m is not None]

    def features(self, video: torch.Tensor | None = None, faces: torch.Tensor | None = None,
                 face_mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if hasattr(self, "backbone"):
            parts.append(self.backbone(video.transpose(1, 2)))  # (B, 3, T, H, W) -> (B, 512)
        if hasattr(self, "face"):
            parts.append(self.face(faces, face_mask))
        return torch.cat(parts, 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "face"):
            split = features.shape[1] - self.face.width
            faces, share = features[:, split:-1], features[:, -1:]
            faces = torch.where(share > 0, faces, self.no_face.to(faces.dtype))
            features = torch.cat([features[:, :split], faces, share], 1)
        return self.fc(features)

    def forward(self, video: torch.Tensor | None = None, faces: torch.Tensor | None = None,
                face_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(video, faces, face_mask))


class SpecAugment(nn.Module):
    """(B, 1, M, F) log-mel, (B,) real frames -> the same, augmented in train mode only (identity in
    eval mode). Per clip: SpecAugment's time and frequency masks (Park et al., 2019; masked bins
    set to 0, the clip's mean level after per-clip normalisation), a random gain (an offset of the
    log-mel, in units of the clip's standard deviation) and Gaussian noise, on the real frames.
    Draws from torch's global RNG, which training seeds per batch."""

    def __init__(self, time_masks: int = 2, max_time_fraction: float = 0.1, freq_masks: int = 2, max_freq_bands: int = 8,
                 gain: float = 0.3, noise: float = 0.1):
        super().__init__()
        self.time_masks, self.max_time_fraction = time_masks, max_time_fraction
        self.freq_masks, self.max_freq_bands = freq_masks, max_freq_bands
        self.gain, self.noise = gain, noise

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return mel
        x = mel.squeeze(1)  # (B, M, F)
        b, m, f = x.shape
        bands = torch.full((b,), m, device=x.device)
        time_masked = random_spans(self.time_masks, lengths * self.max_time_fraction, lengths, f)  # (B, F)
        band_masked = random_spans(self.freq_masks, torch.full((b,), self.max_freq_bands, device=x.device), bands, m)  # (B, M)
        keep = ~(time_masked[:, None, :] | band_masked[:, :, None])  # (B, M, F)
        real = (torch.arange(f, device=x.device) < lengths[:, None]).to(x.dtype)  # (B, F)
        offset = (torch.rand(b, 1, 1, device=x.device) * 2 - 1) * self.gain + torch.randn_like(x) * self.noise
        return ((x + offset * real[:, None, :]) * keep).unsqueeze(1)


def random_spans(count: int, max_width: torch.Tensor, extent: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: per row, `count` spans of a random width in 0..max_width (B,) at random
    places within the row's first `extent` (B,) positions."""
    b, device = len(extent), extent.device
    positions = torch.arange(size, device=device)
    hit = torch.zeros(b, size, dtype=torch.bool, device=device)
    for _ in range(count):
        width = (torch.rand(b, device=device) * (max_width.floor() + 1)).long()
        start = (torch.rand(b, device=device) * (extent - width + 1).clamp(min=1)).long()
        hit |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return hit


def conv_frames(lengths: torch.Tensor) -> torch.Tensor:
    """(B,) real input frames -> (B,) output frames of the audio convolutions that see real frames
    only: Conv1d(k=3) drops 2, MaxPool1d(2) halves, Conv1d(k=3) drops 2. At least 1."""
    return ((lengths - 2) // 2 - 2).clamp(min=1)


class AudioEncoder(nn.Module):
    """(B, 1, M, F) log-mel and (B,) real frames -> (B, feature_dim): 1D convolutions over time,
    pooled over all F frames (the design's AdaptiveAvgPool1d) or over the real frames only
    (pooling="masked"), then a trainable projection.

    Frozen convolutions (the design): `features` runs them and pools, (B, 128), and `head` is the
    projection. Trainable convolutions: the frozen part is the log-mel itself, so `features` is
    the identity and `head` augments (in train mode), convolves, pools and projects; either way
    `features` can be cached.
    """

    def __init__(self, n_mels: int, out_dim: int, dropout: float, frozen: bool = True, pooling: str = "all",
                 augment: bool = False):
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
        self.frozen, self.pooling = frozen, pooling
        if frozen:
            self.conv_layers.requires_grad_(False)
        self.augment = SpecAugment() if augment and not frozen else None
        self.feature_width = AUDIO_CONV_FEATURES
        self.projection = nn.Sequential(nn.Linear(AUDIO_CONV_FEATURES, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def feature_parts(self) -> list[nn.Module]:
        return [self.conv_layers] if self.frozen else []

    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, M, F) -> (B, 128) pooled, or the log-mel itself when the convolutions train."""
        return self.convolve(audio, lengths) if self.frozen else audio

    def head(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if not self.frozen:
            if self.augment is not None:
                full = torch.full(features.shape[:1], features.shape[-1], device=features.device)
                features = self.augment(features, full if lengths is None else lengths)
            features = self.convolve(features, lengths)
        return self.projection(features)

    def convolve(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, M, F) -> (B, 128): the convolutions and the pooling."""
        if self.pooling == "all":
            return self.conv_layers(audio.squeeze(1)).squeeze(-1)  # (B, M, F) -> (B, 128, 1) -> (B, 128)
        if lengths is None:
            raise ValueError("audio_pooling='masked' needs audio_lengths (B,), the real frames of each clip, "
                             "as model.processor.collate makes them")
        # Frames past the batch's longest clip are padding everywhere: not convolved at all.
        audio = audio[..., : max(int(lengths.max()), 8)]
        x = self.conv_layers[:-1](audio.squeeze(1))  # (B, 128, F')
        n = conv_frames(lengths).clamp(max=x.shape[-1])
        mask = (torch.arange(x.shape[-1], device=x.device) < n[:, None]).to(x.dtype)  # (B, F')
        return (x * mask[:, None, :]).sum(-1) / n[:, None].to(x.dtype)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(audio, lengths), lengths)


class WhisperAudioEncoder(nn.Module):
    """(B, 1, 80, F) Whisper log-mel and (B,) real frames -> (B, feature_dim): the frozen Whisper-base
    encoder (faster-whisper's CTranslate2 model, int8, on the CPU) run on each clip's real frames
    only (no padding to Whisper's 30 s: 28x cheaper, and no padding in the feature), the mean and
    standard deviation of its 512-wide outputs over time (B, 1024), then a trainable projection.
    The frozen part is not a torch module: config.json names it with its sha256."""

    def __init__(self, out_dim: int, dropout: float, load: bool = True):
        super().__init__()
        self.whisper = load_whisper_base() if load else None
        self.feature_width = 2 * WHISPER_WIDTH
        self.projection = nn.Sequential(nn.Linear(self.feature_width, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def feature_parts(self) -> list[nn.Module]:
        return []

    @torch.no_grad()
    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        import ctranslate2

        out = []
        for i, mel in enumerate(audio[:, 0].float().cpu().numpy()):  # (80, F) each
            n = mel.shape[1] if lengths is None else int(lengths[i])
            n = max(2, n - n % 2)  # the encoder's strided convolution halves the frames
            x = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None, :, :n]))
            h = torch.from_numpy(np.array(self.whisper.model.encode(x, to_cpu=True)))[0]  # (n / 2, 512)
            out.append(torch.cat([h.mean(0), h.std(0, correction=0)]))
        return torch.stack(out).to(audio.device)

    def head(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.projection(features)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(audio, lengths))


def classifier(in_dim: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


@dataclass
class EmotionSentimentOutput:
    """emotion_logits: (B, 7) in `emosent.labels.EMOTIONS` order; sentiment_logits: (B, 3) in SENTIMENTS order.
    experts (late fusion only): every expert -> (emotion (B, 7), sentiment (B, 3) calibrated
    log-probabilities, present (B,) bool); an expert that abstained on a row has present False."""

    emotion_logits: torch.Tensor
    sentiment_logits: torch.Tensor
    experts: dict | None = None
    present: torch.Tensor | None = None  # (B,) bool: False where the model abstained (it lacked its input)


# Keyword arguments of `forward` per modality: raw inputs (video: those of the model's video
# encoder, see VideoEncoder.inputs), and the cached output of the frozen part.
RAW_INPUTS = {"text": ("input_ids", "attention_mask"), "video": ("video", "faces", "face_mask"), "audio": ("audio",)}
FEATURE_INPUTS = {"text": "text_features", "video": "video_features", "audio": "audio_features"}
# token_type_ids: text with dialogue context (0 the utterance, 1 its context); audio_lengths: the
# real frames of each clip's log-mel, for masked audio pooling
# video_present / audio_present: whether each clip has the stream at all (the processor's masks)
OPTIONAL_INPUTS = ("token_type_ids", "audio_lengths", "video_present", "audio_present")
INPUT_NAMES = (*(n for names in RAW_INPUTS.values() for n in names), *OPTIONAL_INPUTS, *FEATURE_INPUTS.values())
# every input of one modality, raw, cached and its mask: what a late fusion hands the expert of that modality
MODALITY_INPUTS = {"text": ("input_ids", "attention_mask", "token_type_ids", "text_features"),
                   "video": ("video", "faces", "face_mask", "video_features", "video_present"),
                   "audio": ("audio", "audio_lengths", "audio_features", "audio_present")}


def model_inputs(batch: dict) -> dict:
    """The entries of a batch that `EmotionSentimentModel.forward` takes (labels and the rest left out)."""
    return {k: batch[k] for k in INPUT_NAMES if k in batch}


class EmotionSentimentModel(PretrainedModel):
    """Text, video and audio encoders -> concat (B, 128 * modalities) -> fusion (B, 256) -> two heads.

    `self.processor` turns utterances into this model's inputs (see `emosent.processor`). A model
    of one media modality (an expert: audio only, say) abstains where its stream is absent
    (`EmotionSentimentOutput.present`); a model over several reads missing audio as silence and
    needs a video stream where it reads video."""

    model_type = "multimodal"

    def __init__(self, config: ModelConfig, processor_config: ProcessorConfig = ProcessorConfig(), *,
                 pretrained: bool | tuple[str, ...] = True, text_source: str | Path | None = None, tokenizer=None):
        """pretrained: load the frozen encoders' weights by their names (True: every modality; a
        tuple: those modalities; False: the architecture only, no downloads, for `from_pretrained`).
        text_source: a directory with the text backbone's config (and tokenizer) when its weights
        are not loaded by name. tokenizer: use this one rather than the text encoder's own."""
        super().__init__()
        if config.pooling is None:  # the text encoder's recommended pooling, saved as chosen
            config = replace(config, pooling=text_defaults(config.text_encoder)["pooling"])
        self.config = config
        by_name = set(config.modalities if pretrained is True else pretrained or ())
        d = config.feature_dim
        if "text" in config.modalities:
            source = config.text_encoder if "text" in by_name else str(text_source or config.text_encoder)
            backbone, own_tokenizer = load_text_encoder(source, pretrained="text" in by_name)
            tokenizer = tokenizer or own_tokenizer
            self.text = TextEncoder(backbone, config.pooling, d, config.finetune_text_layers)
        if "video" in config.modalities:
            parts = config.video_encoder.split("+")
            r3d = build_r3d18(config.video_weights if "video" in by_name else "none") if "r3d18" in parts else None
            face = (load_fer_network() if "video" in by_name else MiniXception()) if "face" in parts else None
            self.video = VideoEncoder(r3d, face, d, config.encoder_dropout)
        if "audio" in config.modalities and config.audio_encoder == "whisper-base":
            self.audio = WhisperAudioEncoder(d, config.encoder_dropout, load="audio" in by_name)
        elif "audio" in config.modalities:
            self.audio = AudioEncoder(processor_config.n_mels, d, config.encoder_dropout, frozen=not config.train_audio_conv,
                                      pooling=config.audio_pooling, augment=config.audio_augment)
        self.processor = Processor(processor_config, config.modalities, tokenizer if "text" in config.modalities else None,
                                   config.video_encoder, config.audio_encoder)
        self.fusion = nn.Sequential(
            nn.Linear(d * len(config.modalities), config.fusion_dim),
            nn.BatchNorm1d(config.fusion_dim),
            nn.ReLU(),
            nn.Dropout(config.fusion_dropout),
        )
        self.emotion_head = classifier(config.fusion_dim, config.head_dim, len(EMOTIONS), config.head_dropout)
        self.sentiment_head = classifier(config.fusion_dim, config.head_dim, len(SENTIMENTS), config.head_dropout)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def encoders(self) -> dict[str, nn.Module]:
        return {m: getattr(self, m) for m in self.config.modalities}

    def feature_modules(self) -> list[nn.Module]:
        """Each encoder's part before its head: what `encode` runs, frozen and cacheable."""
        return [part for enc in self.encoders.values() for part in enc.feature_parts()]

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules whose parameters are all frozen: they stay in eval mode (see `train`)."""
        return [m for m in self.feature_modules() if not any(p.requires_grad for p in m.parameters())]

    def frozen_state_keys(self) -> set[str]:
        """state_dict keys of the frozen modules (weights and BatchNorm statistics)."""
        return state_keys(self, self.frozen_modules())

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

    def encode(self, batch: dict, modalities: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """A batch of raw inputs (as `self.processor.collate` makes them) -> the outputs of each
        encoder's part before its head, keyed as `forward`'s *_features arguments: text_features
        (B, H), video_features (B, 512), audio_features (B, 128) (or the log-mel (B, 1, M, F) when
        the audio convolutions train) with audio_lengths (B,). The one path from inputs to
        features, for training, extraction, evaluation and analysis; checks the inputs first."""
        out = {}
        for modality in self.config.modalities if modalities is None else modalities:
            names = self.video.inputs if modality == "video" else RAW_INPUTS[modality]
            raw = {name: batch.get(name) for name in names}
            if any(x is None for x in raw.values()):
                raise ValueError(f"the model uses {modality}: pass {' and '.join(names)} or {FEATURE_INPUTS[modality]}")
            check_raw_input(modality, raw, self.processor)
            if modality == "text":
                raw["token_type_ids"] = batch.get("token_type_ids")
            if modality == "audio":
                raw["lengths"] = out["audio_lengths"] = audio_lengths(batch, self.processor.audio_shape[-1])
            out[FEATURE_INPUTS[modality]] = self.encoders[modality].features(**raw)
            if batch.get(f"{modality}_present") is not None:  # kept with the features: abstention is decided from it
                out[f"{modality}_present"] = batch[f"{modality}_present"]
        return out

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        faces: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        video_present: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
    ) -> EmotionSentimentOutput:
        """Each modality of the config takes either its raw inputs or its cached frozen features:
        input_ids, attention_mask (B, L) long, token_type_ids (B, L) with context | text_features
        (B, H), or (B, L, H) with attention_mask (and token_type_ids) when the top text layers train;
        video (B, T, 3, S, S) float and/or faces (B, T, 1, 64, 64) float with face_mask (B, T) bool,
        as the video encoder takes them | video_features (B, 512 and/or 136);
        audio (B, 1, M, F) float | audio_features (B, 128), or the log-mel (B, 1, M, F) when the audio
        convolutions train; audio_lengths (B,) long, each clip's real frames (needed by masked pooling);
        video_present, audio_present (B,) bool: whether each clip has the stream (see `present_mask`)."""
        given = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, video=video, faces=faces,
                     face_mask=face_mask, audio=audio, audio_lengths=audio_lengths, text_features=text_features,
                     video_features=video_features, audio_features=audio_features)
        raw = tuple(m for m in self.config.modalities if given[FEATURE_INPUTS[m]] is None)
        features = {**{k: v for k, v in given.items() if k in FEATURE_INPUTS.values()}, **self.encode(given, raw)}
        parts = []
        for modality, encoder in self.encoders.items():
            extra = {"text": (attention_mask, token_type_ids), "audio": (features.get("audio_lengths", audio_lengths),)}.get(modality, ())
            parts.append(encoder.head(features[FEATURE_INPUTS[modality]], *extra))  # (B, feature_dim)
        fused = self.fusion(torch.cat(parts, dim=1))  # (B, feature_dim * modalities) -> (B, fusion_dim)
        emotion = self.emotion_head(fused)
        present = self.present_mask(len(emotion), emotion.device, video_present=video_present, audio_present=audio_present)
        return EmotionSentimentOutput(emotion, self.sentiment_head(fused), present=present)

    def present_mask(self, b: int, device, **streams: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool: where this model has what it reads. A model of one media stream (an audio
        expert) abstains without it; text is always there (empty text is skipped earlier); a
        model of several modalities cannot leave one out, so it always answers."""
        present = torch.ones(b, dtype=torch.bool, device=device)
        media = [m for m in self.config.modalities if m != "text"]
        if self.config.modalities == tuple(media[:1]) and streams.get(f"{media[0]}_present") is not None:
            present = streams[f"{media[0]}_present"].to(device=device, dtype=torch.bool)
        return present

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def frozen_spec(self) -> dict:
        """What, besides the processor and the frozen weights, changes the frozen outputs (the
        feature cache's key)."""
        c = self.config
        return {"pooling": c.pooling if "text" in c.modalities else None,
                **({"audio": [c.audio_encoder, c.audio_pooling, c.train_audio_conv]} if "audio" in c.modalities else {})}

    def by_name(self) -> dict[str, dict]:
        """The frozen encoders that can be rebuilt from their name wherever the model is loaded
        (registry names, hub ids, folders and files): modality -> {"source", "sha256"}."""
        sources = {}
        if "text" in self.config.modalities and text_encoder_by_name(self.config.text_encoder):
            sources["text"] = encoder_source(self.config.text_encoder)
        if hasattr(self, "video") and hasattr(self.video, "backbone") and video_weights_by_name(self.config.video_weights):
            sources["video"] = encoder_source(self.config.video_weights)
        if hasattr(self, "video") and hasattr(self.video, "face"):
            sources["face"] = FACE_SOURCE
        refs = {key: {"source": source, "sha256": weights_digest(self.named_parts(key))} for key, source in sources.items()}
        if isinstance(getattr(self, "audio", None), WhisperAudioEncoder):
            refs["audio"] = {"source": "whisper-base", "sha256": WHISPER_BASE_SHA256}  # checked when the parts are joined
        return refs

    def named_parts(self, key: str) -> list[nn.Module]:
        """The frozen modules an entry of config.json's frozen_encoders stands for: "text" (the text
        encoder's frozen part), "video" (R3D-18), "face" (the FER2013 network)."""
        return {"text": lambda: self.text.feature_parts(), "video": lambda: [self.video.backbone],
                "face": lambda: [self.video.face], "audio": lambda: []}[key]()

    def save_pretrained(self, directory: str | Path, *, include_frozen: bool = False) -> Path:
        """Write config.json (config, label names and the frozen encoders it names, with their
        sha256), processor.json with the tokenizer, and model.safetensors: what training changed
        (trainable weights, BatchNorm statistics) and the frozen parts that no name rebuilds (random
        ones). The frozen encoders named in config.json are left out (PEFT-style) unless
        include_frozen, which writes a folder that needs nothing else."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        refs = self.by_name()
        for key, ref in refs.items():
            ref["in_folder"] = include_frozen and key != "audio"  # Whisper-base is not a torch module: always by name
        # the named encoders' frozen parts; layers that training changed (--finetune-text-layers) stay in
        left_out = set() if include_frozen else state_keys(self, [p for key in refs for p in self.named_parts(key)])
        meta = {"format": FOLDER_FORMAT, "model_type": self.model_type, "model_config": self.config.to_dict(),
                "emotions": list(EMOTIONS), "sentiments": list(SENTIMENTS), "frozen_encoders": refs}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.processor.save_pretrained(directory)
        if "text" in self.config.modalities:
            self.text.backbone.config.save_pretrained(directory / TOKENIZER_DIR)
        # clone: tensors that share memory cannot be saved as they are; write_atomically: safetensors
        # writes mode 0600, and a model folder is meant to be shared
        tensors = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items() if k not in left_out}
        write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> EmotionSentimentModel:
        """Rebuild a model written by `save_pretrained`, in eval mode: frozen encoders named in
        config.json are loaded by name and must match their sha256. A folder that is not one
        (missing, truncated or edited files), or a named encoder that is missing or different here,
        raises ValueError or FileNotFoundError in one line naming the file and what to do."""
        directory = Path(directory)
        config, meta = read_model_config(directory)
        legacy = "format" not in meta  # written before processor.json: everything is in the folder
        processor_config = (ProcessorConfig(n_mels=meta["model_config"].get("n_mels", 64)) if legacy
                            else read_processor_config(directory))
        refs = {} if legacy else meta.get("frozen_encoders") or {}
        by_name = [m for m, ref in refs.items() if not ref.get("in_folder")]
        tokenizer = load_tokenizer(directory) if "text" in config.modalities else None
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the model folder is incomplete; copy the whole folder written by emosent train")
        text_dir = directory / TOKENIZER_DIR
        try:  # the architecture only: the text backbone from its saved config
            model = cls(config, processor_config, pretrained=False, text_source=text_dir, tokenizer=tokenizer)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{text_dir}: cannot rebuild the text encoder from its config "
                             f"({err.__class__.__name__}: {str(err)[:200]}); copy the folder again") from None
        for key in by_name:  # first: trained layers inside a named encoder come from the file below
            load_named_encoder(model, key, refs[key], directory / CONFIG_FILE)
        try:
            missing, unexpected = load_model(model, str(weights), strict=False)
        except SafetensorError as err:
            raise ValueError(f"{weights}: not a readable safetensors file ({err}); it is truncated or corrupt: copy it again") from None
        except RuntimeError as err:  # other shapes than config.json says
            raise ValueError(f"{weights}: its tensors do not match {directory / CONFIG_FILE} ({str(err).splitlines()[0][:200]}); "
                             "the two files come from different models") from None
        check_finite(model.state_dict(), weights)
        missing = set(missing) - state_keys(model, [p for key in by_name for p in model.named_parts(key)])
        if missing or unexpected:
            example = sorted(missing or unexpected)[0]
            raise ValueError(f"{weights}: its tensors do not match {directory / CONFIG_FILE} ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, e.g. {example}); the two files come from different models")
        return model.eval()


def load_named_encoder(model: EmotionSentimentModel, key: str, ref: dict, config_path: Path) -> None:
    """Load the frozen encoder a model folder names (a key of its frozen_encoders) into the model,
    and check the sha256 of its frozen parts."""
    source, expected = ref["source"], ref["sha256"]
    what = f"{config_path} names the {key} encoder {source!r} (sha256 {expected[:12]})"
    remedy = f"{how_to_get(key, source)}, or use a self-contained copy of the model (emosent export --self-contained, made where it is at hand)"
    try:
        if key == "text":
            target, loaded = model.text.backbone, load_text_encoder(source)[0]
        elif key == "video":
            target, loaded = model.video.backbone, build_r3d18(source)
        elif key == "audio":  # Whisper-base: not a torch module; its sha256 is checked as it is assembled
            model.audio.whisper = load_whisper_base()
            return
        else:
            target, loaded = model.video.face.network, load_fer_network()
        wanted = target.state_dict().keys()  # R3D-18's own fc is not part of the encoder
        target.load_state_dict({k: v for k, v in loaded.state_dict().items() if k in wanted})
    except (WeightsUnavailableError, ValueError, OSError, RuntimeError) as err:
        raise ValueError(f"{what}, which cannot be loaded here ({' '.join(str(err).split())[:240]}); {remedy}") from None
    found = weights_digest(model.named_parts(key))
    if found != expected:
        raise ValueError(f"{what}, but the one found here differs (sha256 {found[:12]}); {remedy}")


def state_keys(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    """The state_dict keys of `modules`, submodules of `model`."""
    prefixes = {id(m): name for name, m in model.named_modules()}
    return {f"{prefixes[id(m)]}.{k}" for m in modules for k in m.state_dict()}


def how_to_get(modality: str, source: str) -> str:
    if modality == "text" and source in TEXT_ENCODERS:
        return TEXT_ENCODERS[source].how_to_get
    if modality == "video" and source in VIDEO_HOW_TO_GET:
        return VIDEO_HOW_TO_GET[source]
    if modality == "audio":
        return WHISPER_HOW_TO_GET
    if modality == "face":
        return "reinstall emosent: the FER2013 network's weights ship inside it (emosent/weights)"
    return f"put the original {source} back"


def read_model_config(directory: Path) -> tuple[ModelConfig, dict]:
    """The checked ModelConfig of a model folder's config.json, and the file's whole content."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        hint = f"; did you mean {directory / 'model'}?" if (directory / "model" / CONFIG_FILE).is_file() else ""
        raise FileNotFoundError(f"{config_path} not found: expected a model directory written by emosent train{hint}")
    meta = read_json_object(config_path, "model_config")
    if meta.get("emotions") != list(EMOTIONS) or meta.get("sentiments") != list(SENTIMENTS):
        raise ValueError(f"{config_path}: label names differ from this version's {EMOTIONS} / {SENTIMENTS}")
    fields = dict(meta["model_config"])
    if "format" not in meta:
        fields.pop("n_mels", None)  # format 1 kept it here; it is a processor setting now
    elif meta["format"] not in (2, FOLDER_FORMAT):
        raise ValueError(f"{config_path}: folder format {meta['format']!r}, but this version reads {FOLDER_FORMAT}; "
                         "use the emosent version that wrote it")
    if not (directory / PROCESSOR_FILE).is_file() and "format" in meta:
        raise FileNotFoundError(f"{directory / PROCESSOR_FILE} not found: the model folder is incomplete; copy the whole folder")
    return ModelConfig.from_dict(fields, f"{config_path}: model_config"), meta


def check_raw_input(modality: str, tensors: dict[str, torch.Tensor], processor: Processor) -> None:
    """Clear errors at the public boundary instead of a shape error deep inside a backbone, and
    inputs that another preprocessing made (train/serve skew) refused."""
    settings = processor.config
    if modality == "text":
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (B, L), got {tuple(ids.shape)} and {tuple(mask.shape)}")
    t, s = settings.num_frames, settings.frame_size
    x = tensors.get("video")
    if x is not None and (x.dim() != 5 or tuple(x.shape[1:]) != (t, 3, s, s)):
        raise ValueError(f"video must be (B, {t}, 3, {s}, {s}) as this model's processor makes it, got {tuple(x.shape)}")
    faces, mask = tensors.get("faces"), tensors.get("face_mask")
    if faces is not None and (faces.dim() != 5 or tuple(faces.shape[1:]) != (t, 1, FACE_SIZE, FACE_SIZE)
                              or tuple(mask.shape) != tuple(faces.shape[:2])):
        raise ValueError(f"faces must be (B, {t}, 1, {FACE_SIZE}, {FACE_SIZE}) and face_mask (B, {t}) as this model's "
                         f"processor makes them, got {tuple(faces.shape)} and {tuple(mask.shape)}")
    _, m, f = processor.audio_shape
    x = tensors.get("audio")
    if modality == "audio" and (x.dim() != 4 or tuple(x.shape[1:]) != (1, m, f)):
        raise ValueError(f"audio must be (B, 1, {m}, {f}) as this model's processor makes it, got {tuple(x.shape)}")


def audio_lengths(batch: dict, f: int) -> torch.Tensor | None:
    """A batch's audio_lengths, checked: (B,) whole numbers in 0..F; None when it has none."""
    lengths, audio = batch.get("audio_lengths"), batch["audio"]
    if lengths is None:
        return None
    if lengths.shape != audio.shape[:1] or lengths.is_floating_point() or lengths.min() < 0 or lengths.max() > f:
        raise ValueError(f"audio_lengths must be ({len(audio)},) whole numbers of real frames in 0..{f}, "
                         f"got {tuple(lengths.shape)} {lengths.dtype}")
    return lengths

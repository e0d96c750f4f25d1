# MTCNN face detection, trimmed from facenet-pytorch 2.6.0 (models/mtcnn.py, models/utils/detect_face.py;
# github.com/timesler/facenet-pytorch), which carries this notice:
#
#   MIT License
#
#   Copyright (c) 2019 Timothy Esler
#
#   Permission is hereby granted, free of charge, to any person obtaining a copy
#   of this software and associated documentation files (the "Software"), to deal
#   in the Software without restriction, including without limitation the rights
#   to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
#   copies of the Software, and to permit persons to whom the Software is
#   furnished to do so, subject to the following conditions:
#
#   The above copyright notice and this permission notice shall be included in all
#   copies or substantial portions of the Software.
#
#   THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
#   IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
#   FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
#   AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
#   LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
#   OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
#   SOFTWARE.
"""MTCNN (Zhang et al. 2016): three small cascaded networks that find faces and five landmarks.

Vendored so that a plain `pip install emosent` detects faces: facenet-pytorch's metadata pins
torch<2.3 and numpy<2. Kept: the three networks and `detect` on a batch of equal-size frames, with
the same operations in the same order, so boxes equal facenet-pytorch's (bench/mtcnn_vendored.py
measures it on the shared real clips and photos). Left out: PIL and OpenCV inputs, face extraction,
selection heuristics, training helpers. The weights are facenet-pytorch's data/{p,r,o}net.pt, stored
as one safetensors file (tools/convert_mtcnn_weights.py; sha256 in weights/LICENSES.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms

WEIGHTS_FILE = Path(__file__).resolve().parents[1] / "weights" / "mtcnn.safetensors"
WEIGHTS_SHA256 = "442c2136e5b0ac37e69ac9a8f92cabb56588d6c37b6276c4908a47b69cc5eb03"  # tools/convert_mtcnn_weights.py
THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R- and O-net's face probability to pass a candidate on
SCALE_FACTOR = 0.709  # between the image pyramid's levels
BATCH = 512  # candidates per R-/O-net call


class PNet(nn.Module):
    """Proposal network: fully convolutional over a pyramid level, 12x12 windows at stride 2."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, kernel_size=3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, kernel_size=3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, kernel_size=3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)  # box offsets, face probability


class RNet(nn.Module):
    """Refinement network on 24x24 candidates."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, kernel_size=3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, kernel_size=3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, kernel_size=2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # the order the weights were ported from (TensorFlow)
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 candidates: box offsets, five landmarks, face probability."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


@dataclass
class Detections:
    """One frame's faces: boxes (N, 4) x0 y0 x1 y1, probabilities (N,), landmarks (N, 5, 2) x y
    (left eye, right eye, nose, mouth left, mouth right), in the frame's pixels."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray


class MTCNN(nn.Module):
    """The three networks with their packaged weights, in eval mode. `min_face_px` is the smallest
    face looked for: the image pyramid starts where such a face is 12 px."""

    def __init__(self, min_face_px: int = 20, *, path: Path = WEIGHTS_FILE):
        super().__init__()
        self.min_face_px = min_face_px
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise ValueError(f"{path}: sha256 {digest} differs from the MTCNN weights emosent ships "
                             f"({WEIGHTS_SHA256}): reinstall emosent")
        self.load_state_dict(load_file(path))
        self.eval()

    @torch.no_grad()
    def detect(self, frames: torch.Tensor) -> list[Detections]:
        """(T, H, W, 3) float 0-255 RGB -> each frame's faces."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"MTCNN.detect takes frames (T, H, W, 3), got {tuple(frames.shape)}")
        boxes, points, image_inds = detect_faces(frames.permute(0, 3, 1, 2), self.min_face_px,
                                                 self.pnet, self.rnet, self.onet)
        found = []
        for t in range(len(frames)):
            rows = np.flatnonzero(image_inds == t)
            found.append(Detections(boxes[rows, :4], boxes[rows, 4], points[rows]))
        return found


def detect_faces(imgs: torch.Tensor, minsize: int, pnet: PNet, rnet: RNet, onet: ONet):
    """(T, 3, H, W) float 0-255 -> boxes (N, 5: x0 y0 x1 y1 probability), landmarks (N, 5, 2) and
    the frame of each (N,), as numpy. facenet-pytorch's detect_face, tensor input only."""
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales, scale = [], m
    while minl >= 12:
        scales.append(scale)
        scale *= SCALE_FACTOR
        minl *= SCALE_FACTOR

    # First stage: P-net over the pyramid, NMS within each level and frame, then within each frame
    boxes, image_inds, scale_picks, offset = [], [], [], 0
    for scale in scales:
        im_data = (imresample(imgs, (int(h * scale + 1), int(w * scale + 1))) - 127.5) * 0.0078125
        reg, probs = pnet(im_data)
        boxes_scale, image_inds_scale = generate_bounding_box(reg, probs[:, 1], scale, THRESHOLDS[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)
        scale_picks.append(batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5) + offset)
        offset += boxes_scale.shape[0]
    boxes, image_inds = torch.cat(boxes), torch.cat(image_inds)
    scale_picks = torch.cat(scale_picks)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]]).permute(1, 0)
    boxes = rerec(boxes)

    # Second stage: R-net on 24x24 crops
    if len(boxes) > 0:
        reg, probs = run_batched(rnet, crops(imgs, boxes, image_inds, 24, w, h))
        score = probs[:, 1]
        ipass = score > THRESHOLDS[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, mv = image_inds[ipass], reg[ipass]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    # Third stage: O-net on 48x48 crops, landmarks, NMS by the smaller box's area
    points = torch.zeros(0, 5, 2)
    if len(boxes) > 0:
        reg, marks, probs = run_batched(onet, crops(imgs, boxes, image_inds, 48, w, h))
        score = probs[:, 1]
        ipass = score > THRESHOLDS[2]
        marks = marks[ipass].permute(1, 0)  # (10, N): five x then five y, in the box's units
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, mv = image_inds[ipass], reg[ipass]
        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        points_x = w_i.repeat(5, 1) * marks[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        points_y = h_i.repeat(5, 1) * marks[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((points_x, points_y)).permute(2, 1, 0)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_min(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]
    return boxes.numpy(), points.numpy(), image_inds.numpy()


def crops(imgs: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, size: int, w: int, h: int) -> torch.Tensor:
    """Each candidate box cut from its frame (clipped to the frame) and resized to size x size, scaled as the nets expect."""
    y, ey, x, ex = pad(boxes, w, h)
    out = [imresample(imgs[image_inds[k], :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]].unsqueeze(0), (size, size))
           for k in range(len(y)) if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1)]
    return (torch.cat(out) - 127.5) * 0.0078125


def run_batched(net: nn.Module, im_data: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = [net(im_data[i:i + BATCH]) for i in range(0, len(im_data), BATCH)]
    return tuple(torch.cat(v) for v in zip(*out))


def bbreg(boundingbox: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    w = boundingbox[:, 2] - boundingbox[:, 0] + 1
    h = boundingbox[:, 3] - boundingbox[:, 1] + 1
    b1 = boundingbox[:, 0] + reg[:, 0] * w
    b2 = boundingbox[:, 1] + reg[:, 1] * h
    b3 = boundingbox[:, 2] + reg[:, 2] * w
    b4 = boundingbox[:, 3] + reg[:, 3] * h
    boundingbox[:, :4] = torch.stack([b1, b2, b3, b4]).permute(1, 0)
    return boundingbox


def generate_bounding_box(reg: torch.Tensor, probs: torch.Tensor, scale: float, thresh: float):
    """P-net's map cells above `thresh` -> boxes (N, 9: x0 y0 x1 y1 probability, 4 offsets) in the frame, their frames (N,)."""
    stride, cellsize = 2, 12
    reg = reg.permute(1, 0, 2, 3)
    mask = probs >= thresh
    mask_inds = mask.nonzero()
    image_inds = mask_inds[:, 0]
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    bb = mask_inds[:, 1:].type(reg.dtype).flip(1)
    q1 = ((stride * bb + 1) / scale).floor()
    q2 = ((stride * bb + cellsize - 1 + 1) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), image_inds


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS where overlap is the intersection over the smaller box's area."""
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        idx = order[0:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        overlap = w * h / np.minimum(area[i], area[idx])
        order = order[np.where(overlap <= threshold)]
    return np.array(pick, dtype=np.int64)


def batched_nms_min(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """nms_min within each frame: boxes are shifted apart by frame so that frames never overlap."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return torch.as_tensor(nms_min((boxes + offsets[:, None]).numpy(), scores.numpy(), threshold), dtype=torch.long)


def pad(boxes: torch.Tensor, w: int, h: int):
    """Boxes as whole 1-based pixel spans, clipped to the frame: y, ey, x, ex."""
    boxes = boxes.trunc().int().numpy()
    x, y, ex, ey = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex


def rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square on their longer side, about the same centre."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side.repeat(2, 1).permute(1, 0)
    return boxes


def imresample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return interpolate(img, size=size, mode="area")

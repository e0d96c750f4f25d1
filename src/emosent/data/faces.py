"""Frames -> aligned greyscale face crops for the face-expression network (`--video-encoder face`).

Detection is MTCNN, vendored from facenet-pytorch 2.6.0 (emosent.data.mtcnn, MIT; its three small
networks ship inside emosent, so it works offline with a plain install; pure PyTorch, so it runs
wherever the model does). We chose it over OpenCV's detectors: OpenCV's Haar cascades give no
landmarks and many false faces, and its DNN detectors' weights do not ship in the package. MTCNN's
five landmarks let us level the eyes.

Per frame, the face read is the speaker's where several are seen and the speaker can be told
(`emosent.data.face_tracks`), else the largest detection MTCNN is confident in. Its crop is a square
around the box (plus a margin), rotated so the eyes are level, sampled to 64x64 greyscale in one
`grid_sample`, and scaled as the network was trained (x / 255 - 0.5) * 2. Frames without a face
get zeros and a False in the mask; the encoder pools over the frames with a face only, and a clip
with none gets the encoder's learned "no face" input.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from emosent.data.face_tracks import Face, FacePick, pick_faces
from emosent.data.mtcnn import MTCNN

FACE_SIZE = 64  # the FER2013 network's input side
# RGB crops (for the face-api network beside FER2013): the same square sampled at twice FACE_SIZE,
# in colour and unscaled (0..255); the FER2013 input is derived from it (`grey_from_rgb`).
RGB_CROP_SIZE = 2 * FACE_SIZE
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as OpenCV
MIN_CONFIDENCE = 0.9  # MTCNN's probability below which a detection is not a face
# The smallest face looked for, as a share of the detection size (40 px at 320): a speaker's face
# is rarely smaller in a talking video, and MTCNN's time grows fast as this shrinks (3.9x for 20 px).
MIN_FACE_SHARE = 1 / 8


@functools.lru_cache(maxsize=2)
def detector(min_face_px: int):
    """MTCNN on the CPU, once per process (DataLoader workers each load their own: 2 MB)."""
    # channels-last: the CPU's vectorised convolution and pooling kernels, 1.7x faster on 16
    # frames (boxes within 1e-4 px of the default layout's)
    return MTCNN(min_face_px).to(memory_format=torch.channels_last)


def detect_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """Frames are detected at most `longest` pixels on their long side (MTCNN's time grows with area)."""
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def detect_faces(frames: np.ndarray, detect_longest: int) -> list[list[Face]]:
    """(T, H, W, 3) uint8 -> per frame its confident faces, in the frames' own pixels."""
    t, h, w, _ = frames.shape
    dh, dw = detect_size(h, w, detect_longest)
    small = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8, channels-last in memory
    if (dh, dw) != (h, w):
        # resized as uint8: torch's vectorised channels-last kernel, 7x faster than in float here;
        # the detector sees the image rounded to whole grey levels (tests/test_predict.py: tolerance)
        small = F.interpolate(small, size=(dh, dw), mode="bilinear", antialias=True, align_corners=False)
    small = small.permute(0, 2, 3, 1).float()  # MTCNN takes (T, H, W, 3) 0-255; a copy: decoded frames are read-only
    found = []
    for faces in detector(max(12, round(detect_longest * MIN_FACE_SHARE))).detect(small):
        b, p, lm = (np.asarray(x, dtype=np.float64) for x in (faces.boxes, faces.probs, faces.landmarks))
        found.append([Face(b[i] * (w / dw), lm[i] * (w / dw)) for i in np.flatnonzero(p >= MIN_CONFIDENCE)])
    return found


def main_faces(frames: np.ndarray, detect_longest: int) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(T, H, W, 3) uint8 -> per frame (box x0 y0 x1 y1, landmarks (5, 2)) of its largest confident
    face in the frames' own pixels, or None."""
    return [(f.box, f.landmarks) if f is not None else None
            for f in (max(d, key=lambda f: f.area, default=None) for d in detect_faces(frames, detect_longest))]


def no_faces(t: int, rgb: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """What `crop_faces` gives for T frames in which no face is found: blank crops, an empty mask."""
    shape = (3, RGB_CROP_SIZE, RGB_CROP_SIZE) if rgb else (1, FACE_SIZE, FACE_SIZE)
    return torch.zeros(t, *shape), torch.zeros(t, dtype=torch.bool)


def grey_from_rgb(crops: torch.Tensor) -> torch.Tensor:
    """(N, 3, 128, 128) RGB crops in 0..255 (`crop_faces(..., rgb=True)`) -> (N, 1, 64, 64) in
    [-1, 1]: what `crop_faces` gives without rgb, up to float rounding (grey, sampling and the
    2x2 average are all linear, so their order does not matter)."""
    grey = (crops * torch.tensor(GREY_WEIGHTS, dtype=crops.dtype, device=crops.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (F.avg_pool2d(grey, 2) / 255.0 - 0.5) * 2.0


def crop_faces(frames: np.ndarray, margin: float, detect_longest: int, *, rgb: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H, W, 3) uint8 RGB -> faces (T, 1, 64, 64) float in [-1, 1], or with rgb (T, 3, 128, 128)
    float in 0..255, and a face mask (T,) bool: `read_faces` without its pick."""
    return read_faces(frames, margin, detect_longest, rgb=rgb)[:2]


def read_faces(frames: np.ndarray, margin: float, detect_longest: int, *, rgb: bool = False) -> tuple[torch.Tensor, torch.Tensor, FacePick]:
    """(T, H, W, 3) uint8 RGB -> the crops of the face to read in each frame (the speaker's where
    it can be told, see `emosent.data.face_tracks`) as `crop_faces` gives them, their mask, and
    the pick (how many faces, which rule chose)."""
    t, h, w, _ = frames.shape
    faces, mask = no_faces(t, rgb)
    pick = pick_faces(frames, detect_faces(frames, detect_longest))
    found = [(f.box, f.landmarks) if f is not None else None for f in pick.faces]
    rows = [i for i, f in enumerate(found) if f is not None]
    if not rows:
        return faces, mask, pick
    weights = torch.tensor(GREY_WEIGHTS)
    # Only the part of each frame that its crop reads goes to grey and float (both linear, so the
    # same crop as from the whole frame up to rounding): a few percent of the pixels.
    thetas, windows = [], []
    for i in rows:
        theta = face_affine(*found[i], margin, h, w)
        (y0, y1), (x0, x1) = (sample_span(theta[k], n) for k, n in ((1, h), (0, w)))
        theta = theta * torch.tensor([[w / (x1 - x0)], [h / (y1 - y0)]])  # the frame's coordinates -> the window's
        theta[:, 2] += torch.tensor([(w - 2 * x0) / (x1 - x0) - 1, (h - 2 * y0) / (y1 - y0) - 1])
        thetas.append(theta)
        window = torch.from_numpy(frames[i, y0:y1, x0:x1]).float()  # (h', w', 3)
        windows.append(window.permute(2, 0, 1) if rgb else (window @ weights)[None])  # (3 or 1, h', w')
    # sample at twice the size, then average 2x2: a little anti-aliasing for large faces
    grids = F.affine_grid(torch.stack(thetas), [len(rows), 1, RGB_CROP_SIZE, RGB_CROP_SIZE], align_corners=False)
    crops = torch.cat([F.grid_sample(window[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
                       for window, grid in zip(windows, grids)])
    # grey: the FER network's own input scaling; rgb: kept at 128 in 0..255 for both networks
    faces[rows] = crops if rgb else (F.avg_pool2d(crops, 2) / 255.0 - 0.5) * 2.0
    mask[rows] = True
    return faces, mask, pick


def sample_span(row: torch.Tensor, n: int) -> tuple[int, int]:
    """The pixels [lo, hi) of a frame axis of n pixels that a crop with this affine row reads:
    its corners' coordinates (align_corners=False), widened by the bilinear neighbour, in the frame."""
    corners = [float(row[0] * a + row[1] * b + row[2]) for a in (-1, 1) for b in (-1, 1)]
    pixels = [((c + 1) * n - 1) / 2 for c in corners]
    return max(0, math.floor(min(pixels)) - 1), min(n, math.ceil(max(pixels)) + 2)


def face_affine(box: np.ndarray, landmarks: np.ndarray, margin: float, height: int, width: int) -> torch.Tensor:
    """The (2, 3) map from the crop's normalised coordinates to the frame's: a square of the box's
    longer side times (1 + margin), centred on the box, turned by the angle of the eyes."""
    (x0, y0, x1, y1), (left_eye, right_eye) = box, landmarks[:2]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * (1 + margin) / 2
    angle = math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    cos, sin = math.cos(angle) * half, math.sin(angle) * half
    return torch.tensor([[cos * 2 / width, -sin * 2 / width, 2 * cx / width - 1],
                         [sin * 2 / height, cos * 2 / height, 2 * cy / height - 1]], dtype=torch.float32)

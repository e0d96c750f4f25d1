"""Which face of a clip the face expert reads when its frames hold several: the speaker's, when
it can be told, else the largest (issue 26, faces in the frame).

A clip's faces are MTCNN's confident detections in each sampled frame (`emosent.data.faces`).
They are linked across frames into tracks by box overlap (IoU: faces in a conversation move
little between frames and seldom cross). The speaker is the track whose mouth moves most: a small
greyscale patch around the mouth, placed and turned by MTCNN's five landmarks (so that head
motion moves the patch with the face), normalised for brightness and contrast, and compared from
one of the track's frames to its next. It is chosen only when that motion is clearly the
largest (`SPEAKING_RATIO` times the next track's) and the track is seen in enough frames; else
the frame's largest face, as before. bench/speaking_face.py measures the rule on real faces.

`faces` (the count a record reports) is the most faces seen in one sampled frame: a person who
appears in part of the utterance counts, which a median over the frames would hide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ONLY_FACE, SPEAKING_FACE, LARGEST = "only face", "speaking face", "largest"
FACE_CHOICES = (ONLY_FACE, SPEAKING_FACE, LARGEST)  # a record's face_choice; its code is the index
# What the face crops cannot say, carried from the processor to the record (`emosent.records`):
# the most faces in one sampled frame, and the rule that chose the face read (an index into
# FACE_CHOICES; NO_CHOICE without a face). Per clip, (B,) long in a batch.
FACE_FACTS = ("faces_in_frame", "face_choice")
NO_CHOICE = -1
TRACK_IOU = 0.3  # a detection continues the track whose last box it overlaps most, if at least this
MIN_TRACK_FRAMES = 3  # a track seen in fewer sampled frames cannot be the speaker (two differences at least)
# The most moving mouth is the speaker's only when it moves this many times more than the next
# one; else the largest face is read. bench/speaking_face.py reports the rule at 1.0 beside it.
SPEAKING_RATIO = 1.5
# The mouth patch, in interocular distances: centred a tenth below the mouth corners' midpoint
# (an open jaw drops below them), 1.2 wide and 0.8 high; sampled at PATCH_SIZE (rows, cols).
MOUTH_DROP, MOUTH_WIDTH, MOUTH_HEIGHT = 0.1, 1.2, 0.8
PATCH_SIZE = (12, 18)
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as the crops


@dataclass(frozen=True)
class Face:
    """One detection: box (4,) x0 y0 x1 y1, landmarks (5, 2) (eyes, nose, mouth corners), in the frame's pixels."""

    box: np.ndarray
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


@dataclass(frozen=True)
class FacePick:
    """A clip's face per frame (None where the frame has none to read), the most faces in one
    frame (`count`), and the rule that picked (`choice`, one of FACE_CHOICES; None without faces)."""

    faces: list[Face | None]
    count: int
    choice: str | None


def pick_faces(frames: np.ndarray, detected: list[list[Face]], ratio: float = SPEAKING_RATIO) -> FacePick:
    """(T, H, W, 3) uint8 frames and each frame's faces -> the face to read in each frame."""
    count = max((len(d) for d in detected), default=0)
    largest = [max(d, key=lambda f: f.area) if d else None for d in detected]
    if count <= 1:
        return FacePick(largest, count, ONLY_FACE if count else None)
    tracks = [t for t in link_tracks(detected) if len(t) >= MIN_TRACK_FRAMES]
    if len(tracks) >= 2:
        motion = np.array([mouth_motion(frames, t) for t in tracks])
        first, second = np.argsort(motion)[::-1][:2]
        if motion[first] > 0 and motion[first] >= ratio * motion[second]:
            speaker = tracks[first]
            return FacePick([speaker.get(i) for i in range(len(detected))], count, SPEAKING_FACE)
    return FacePick(largest, count, LARGEST)


def link_tracks(detected: list[list[Face]]) -> list[dict[int, Face]]:
    """Each frame's faces -> tracks {frame index: face}: larger faces first, each continues the
    track (not yet continued in this frame) whose latest box it overlaps most, or starts one."""
    tracks: list[dict[int, Face]] = []
    for i, faces in enumerate(detected):
        taken: set[int] = set()
        for face in sorted(faces, key=lambda f: -f.area):
            overlaps = [(iou(face.box, t[max(t)].box), k) for k, t in enumerate(tracks) if k not in taken]
            best, k = max(overlaps, default=(0.0, -1))
            if best >= TRACK_IOU:
                tracks[k][i] = face
                taken.add(k)
            else:
                tracks.append({i: face})
                taken.add(len(tracks) - 1)
    return tracks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mouth_motion(frames: np.ndarray, track: dict[int, Face]) -> float:
    """The mean absolute change of the track's normalised mouth patch from each of its frames to
    its next (in standard deviations of the patch's grey levels)."""
    order = sorted(track)
    patches = torch.stack([mouth_patch(frames[i], track[i].landmarks) for i in order])  # (N, h, w)
    flat = patches.flatten(1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp(min=1.0)  # at least 1 grey level: a flat patch stays flat
    return float((flat[1:] - flat[:-1]).abs().mean())


def mouth_patch(frame: np.ndarray, landmarks: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 frame and a face's landmarks (5, 2) -> (12, 18) grey patch around its
    mouth, turned so the eyes are level, sized by the interocular distance."""
    h, w, _ = frame.shape
    (left_eye, right_eye), mouth = landmarks[:2], landmarks[3:5].mean(0)
    across = right_eye - left_eye
    d = max(float(np.hypot(*across)), 1.0)
    u = across / d  # along the eyes
    v = np.array([-u[1], u[0]])  # down the face
    centre = mouth + MOUTH_DROP * d * v
    rows, cols = PATCH_SIZE
    a = torch.linspace(-1, 1, cols, dtype=torch.float64)[None, :, None] * (MOUTH_WIDTH * d / 2) * torch.from_numpy(u)
    b = torch.linspace(-1, 1, rows, dtype=torch.float64)[:, None, None] * (MOUTH_HEIGHT * d / 2) * torch.from_numpy(v)
    points = torch.from_numpy(centre) + a + b  # (rows, cols, 2) x y in the frame's pixels
    lo, hi = points.flatten(0, 1).min(0).values.tolist(), points.flatten(0, 1).max(0).values.tolist()  # x y
    x0, y0 = (max(0, math.floor(v) - 1) for v in lo)
    x1, y1 = min(w, math.ceil(hi[0]) + 2), min(h, math.ceil(hi[1]) + 2)
    if x1 <= x0 or y1 <= y0:  # the mouth lies outside the frame: a flat patch
        return torch.zeros(rows, cols)
    # only the window the patch reads goes to grey float; the grid is moved into its coordinates
    window = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1])).float() @ torch.tensor(GREY_WEIGHTS)
    grid = (2 * (points - torch.tensor([x0, y0], dtype=torch.float64)) + 1) / torch.tensor([x1 - x0, y1 - y0], dtype=torch.float64) - 1  # align_corners=False
    return F.grid_sample(window[None, None], grid[None].float(), mode="bilinear", padding_mode="border",
                         align_corners=False)[0, 0]

"""The vendored MTCNN (emosent.data.mtcnn) against facenet-pytorch 2.6.0's, on the shared real data.

For every sampled frame of the real clips (../shared/data/video: CREMA-D, GRID, faces-edge; the
processor's 16 frames each) and every face photo (../shared/data/faces, as bench/faces.py makes them
frames): the raw detections (boxes, probabilities, landmarks), the main face the processor keeps,
its 64x64 crop, and the face expert's output (the FER2013 network's penultimate 128 and 7 logits)
from each detector, and the largest difference. facenet-pytorch is the reference only here: install
it beside emosent for this script (pip install --no-deps facenet-pytorch==2.6.0).

Run: PYTHONPATH=src .venv/bin/python bench/mtcnn_vendored.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emosent.config import ProcessorConfig
from emosent.data import load_clip
from emosent.data import faces
from emosent.data.mtcnn import MTCNN, Detections
from emosent.fer_network import load_fer_network

from faces import as_frame

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ProcessorConfig()


class Reference(torch.nn.Module):
    """facenet-pytorch's MTCNN behind the vendored one's `detect`, as emosent built it before."""

    def __init__(self, min_face_px: int):
        super().__init__()
        from facenet_pytorch import MTCNN as FacenetMTCNN

        self.mtcnn = FacenetMTCNN(keep_all=True, device="cpu", min_face_size=min_face_px, post_process=False)

    def detect(self, frames: torch.Tensor) -> list[Detections]:
        boxes, probs, points = self.mtcnn.detect(frames, landmarks=True)
        empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        return [empty if b is None else Detections(np.asarray(b, np.float64), np.asarray(p, np.float64), np.asarray(lm, np.float64))
                for b, p, lm in zip(boxes, probs, points)]


def inputs(data: Path) -> dict[str, list[np.ndarray]]:
    """Name -> frame batches: each real clip's sampled frames, and the photos one frame each."""
    sets: dict[str, list[np.ndarray]] = {}
    for folder, pattern in (("crema-d", "*.flv"), ("grid", "*.mpg"), ("faces-edge", "*")):
        for path in sorted((data / "video" / folder).glob(pattern)):
            if path.suffix in {".flv", ".mpg", ".mp4", ".mov"}:
                sets.setdefault(f"video/{folder}", []).append(load_clip(path, modalities=("frames",)).frames)
    with open(data / "faces" / "labels.csv", newline="") as f:
        sets["faces (photos)"] = [as_frame(Image.open(data / "faces" / r["path"]))[None] for r in csv.DictReader(f)]
    return sets


def run(batches: list[np.ndarray], network, reference: bool) -> dict[str, list]:
    """Raw detections, main faces, crops and the face expert's outputs for each batch."""
    faces.detector.cache_clear()
    if reference:
        faces.MTCNN = Reference  # what faces.detector builds
    try:
        out = {"raw": [], "main": [], "crops": [], "masks": [], "outputs": []}
        for frames in batches:
            dh, dw = faces.detect_size(*frames.shape[1:3], SETTINGS.face_detect_size)
            min_px = max(12, round(SETTINGS.face_detect_size * faces.MIN_FACE_SHARE))
            small = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2),
                                                    size=(dh, dw), mode="bilinear", antialias=True, align_corners=False)
            out["raw"].append(faces.detector(min_px).detect(small.permute(0, 2, 3, 1).float()))
            out["main"].append(faces.main_faces(frames, SETTINGS.face_detect_size))
            crops, mask = faces.crop_faces(frames, SETTINGS.face_margin, SETTINGS.face_detect_size)
            out["crops"].append(crops)
            out["masks"].append(mask)
            with torch.no_grad():
                penultimate, logits = network.penultimate_and_logits(crops[mask]) if mask.any() else (torch.zeros(0, 128), torch.zeros(0, 7))
            out["outputs"].append(torch.cat([penultimate, logits], 1))
        return out
    finally:
        faces.MTCNN = MTCNN
        faces.detector.cache_clear()


def compare(name: str, ours: dict, ref: dict) -> None:
    frames = sum(len(m) for m in ours["masks"])
    count_diff = box = prob = mark = 0.0
    for a, b in zip((d for batch in ours["raw"] for d in batch), (d for batch in ref["raw"] for d in batch)):
        if len(a.boxes) != len(b.boxes):
            count_diff += 1
            continue
        if len(a.boxes):
            box = max(box, float(np.abs(a.boxes - b.boxes).max()))
            prob = max(prob, float(np.abs(a.probs - b.probs).max()))
            mark = max(mark, float(np.abs(a.landmarks - b.landmarks).max()))
    mask_diff = sum(int((a != b).sum()) for a, b in zip(ours["masks"], ref["masks"]))
    crop = max(float((a - b).abs().max()) for a, b in zip(ours["crops"], ref["crops"]))
    outputs = max((float((a - b).abs().max()) for a, b in zip(ours["outputs"], ref["outputs"]) if len(a) and len(a) == len(b)),
                  default=0.0)
    with_face = sum(int(m.sum()) for m in ours["masks"])
    print(f"| {name} | {len(ours['masks'])} | {frames} | {with_face} | {int(count_diff)} | {box:.2g} | {prob:.2g} | {mark:.2g} "
          f"| {mask_diff} | {crop:.2g} | {outputs:.2g} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    network = load_fer_network()
    print("| input | batches | frames | frames with a face | frames whose face count differs | box max diff (px) "
          "| probability max diff | landmark max diff (px) | face mask differs | crop max diff | face expert output max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, batches in inputs(args.data).items():
        compare(name, run(batches, network, reference=False), run(batches, network, reference=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

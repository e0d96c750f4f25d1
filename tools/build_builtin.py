"""Rebuild the built-in model (src/emosent/builtin) from ../shared/data, with its figures.

One command: .venv/bin/python tools/build_builtin.py [--work runs/builtin] [--out src/emosent/builtin]
[--experts FOLDER] [--face-networks fer2013-mini-xception faceapi-expression] [--face-pooling mean]

1. The text expert: `emosent train` on MELD text (all-MiniLM-L6-v2, its top 2 layers fine-tuned,
   sqrt class weights, 4 epochs, seed 0: BENCHMARKS.md's recommended MELD row).
2. The voice expert: `emosent train` on RAVDESS actors 01-14 (audio only, the frozen Whisper-base
   encoder, 60 epochs, seed 0: BENCHMARKS.md's best RAVDESS row), validated on actors 15-18.
   (--experts FOLDER: take text/ and audio/ from an existing built-in folder instead of 1-2.)
3. The face expert: the packaged face networks (a face_expression model; --face-networks: FER2013,
   face-api.js or both averaged; --face-pooling over frames), its sentiment through
   P(sentiment | emotion) counted on MELD train.
4. The fusion, by the package's own `emosent.fit.fuse`: each expert's temperature fitted on its
   own dev data (MELD dev, RAVDESS 15-18; the face expert's on the 190 face photos, which are not
   a manifest, with the same `emosent.fit.fit_temperature`), equal weights, the mean rule.
5. Figures, each expert's dev predictions with baselines in the same run: majority class;
   logistic regression on the same frozen features (frozen MiniLM, Whisper-base); a centre crop
   without face detection; the fusion rules on label-paired dev triples (each MELD dev utterance
   with a RAVDESS dev clip and a face photo of the same emotion, seeds 0-2: no real example has
   all three modalities, so this is the only joint measurement possible here, and it flatters
   the voice and face experts); the fused model on RAVDESS 15-18 through analyze's path.
6. The folder (config.json, text/, audio/, face/) and MODEL_CARD.md with the figures.
Steps 1-2 are kept in --work and skipped when their model exists (delete it to retrain).
Needs scikit-learn for the baselines: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402
from faces import as_frame, centre_crop, centre_crop_rgb, read_labels  # noqa: E402
from meld_text import MELD, TASKS, baselines, fit_lr, pct, run, scores  # noqa: E402
from real_data import SENTIMENT_OF, write_ravdess_csvs  # noqa: E402

from emosent.data import read_manifest  # noqa: E402
from emosent.data.faces import crop_faces  # noqa: E402
from emosent.evaluate import predict_features  # noqa: E402
from emosent.features import FeatureDataset, extract_features  # noqa: E402
from emosent.fit import fit_temperature, fuse  # noqa: E402
from emosent.encoders.faces import POOLINGS  # noqa: E402
from emosent.fusion import FACE_WEIGHTS, FaceExpressionModel, LateFusionModel  # noqa: E402
from emosent.labels import EMOTIONS, SENTIMENTS  # noqa: E402
from emosent.model import EmotionSentimentModel  # noqa: E402
from emosent.pretrained import load_pretrained  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RAVDESS, FACES = DATA / "ravdess16k", DATA / "faces"
COMMON = ["--text-encoder", "minilm", "--video-weights", "none", "--seed", "0"]
TEXT = ["--modalities", "text", "--pooling", "mean", "--finetune-text-layers", "2", "--class-weights", "sqrt", "--epochs", "4"]
AUDIO = ["--modalities", "audio", "--audio-encoder", "whisper-base", "--epochs", "60"]
PAIRING_SEEDS = (0, 1, 2)


def train_expert(name: str, data: Path, options: list[str], work: Path) -> Path:
    model = work / name / "model"
    if (model / "config.json").is_file():
        print(f"{name} expert: kept {model}")
        return model
    seconds, peak, _ = run(["train", "--data", str(data), "--out", str(work / name), *COMMON, *options,
                            "--cache-dir", str(work / "cache"), "--num-workers", "0"], work / "logs" / f"{name}-train.log")
    print(f"{name} expert: trained in {seconds:.0f} s, peak {peak:.0f} MB")
    return model


def dev_predictions(model: EmotionSentimentModel, data: Path, work: Path):
    """(log-probs {task: (N, k)}, labels {task: (N,)}, frozen features) of `model` on `data`'s dev split."""
    features = extract_features(model, read_manifest(data, "dev"), "dev", work / "cache", num_workers=0)
    probs = predict_features(model, FeatureDataset(features))
    return ({t: probs[t].clamp(min=1e-12).log() for t in TASKS}, {t: features.tensors[t] for t in TASKS}, features)


def face_predictions(face: FaceExpressionModel):
    """Logits of the face expert on the photos (a centre crop where no face is found, as
    bench/faces.py), their labels, and the centre-crop baseline's emotion predictions."""
    from PIL import Image

    rows = read_labels(FACES)
    emotion, sentiment, centre = [], [], []
    settings = face.processor.config
    one = torch.ones(1, 1, dtype=torch.bool)
    rgb = face.processor.face_rgb  # the crops this expert's processor makes: grey 64 or RGB 128
    centred = centre_crop_rgb if rgb else centre_crop  # (C, S, S): one frame's crop
    with torch.no_grad():
        for path, _ in rows:
            image = Image.open(path)
            faces, found = crop_faces(as_frame(image)[None], settings.face_margin, settings.face_detect_size, rgb=rgb)
            out = face(faces=(faces[0] if found[0] else centred(image))[None, None], face_mask=one)
            emotion.append(out.emotion_logits[0])
            sentiment.append(out.sentiment_logits[0])
            centre.append(int(face(faces=centred(image)[None, None], face_mask=one).emotion_logits.argmax()))
    labels = {"emotion": torch.tensor([EMOTIONS.index(e) for _, e in rows]),
              "sentiment": torch.tensor([SENTIMENTS.index(SENTIMENT_OF[e]) for _, e in rows])}
    return {"emotion": torch.stack(emotion), "sentiment": torch.stack(sentiment)}, labels, centre


def metrics(log_probs: dict, labels: dict) -> dict:
    return {t: scores(log_probs[t].argmax(-1).tolist(), labels[t].tolist(), len(TASKS[t])) for t in TASKS}


def sentiment_given_emotion(rows) -> list[list[float]]:
    counts = Counter((u.emotion, u.sentiment) for u in rows)
    table = []
    for e in EMOTIONS:
        n = sum(counts[(e, s)] for s in SENTIMENTS)
        table.append([round(counts[(e, s)] / n, 4) for s in SENTIMENTS])
    return table


def paired(experts: dict, rules: dict) -> dict:
    """Each rule's figures on label-paired triples, mean over PAIRING_SEEDS: every MELD dev
    utterance with a RAVDESS dev clip and a face photo of its emotion."""
    text_lp, text_y = experts["text"]
    by_emotion = {name: [torch.nonzero(experts[name][1]["emotion"] == k).flatten() for k in range(len(EMOTIONS))]
                  for name in ("audio", "face")}
    out = {}
    for rule, weights in rules.items():
        runs = []
        for seed in PAIRING_SEEDS:
            g = torch.Generator().manual_seed(seed)
            picks = {name: torch.stack([pool[int(torch.randint(len(pool), (1,), generator=g))]
                                        for pool in (by_emotion[name][int(y)] for y in text_y["emotion"])])
                     for name in by_emotion}
            fused = {}
            for t in TASKS:
                parts = {"text": text_lp[t], **{name: experts[name][0][t][picks[name]] for name in picks}}
                if weights == "mean":
                    fused[t] = torch.stack([p.exp() for p in parts.values()]).mean(0).log()
                else:
                    fused[t] = sum(w * parts[name] for name, w in weights.items())
            runs.append(metrics(fused, text_y))
        out[rule] = {t: {m: float(np.mean([r[t][m] for r in runs])) for m in runs[0][t]} for t in TASKS}
    return out


def ravdess_end_to_end(model: LateFusionModel, data: Path) -> dict:
    """The fused model on RAVDESS 15-18 (audio files: the face expert abstains, as analyze has it)
    through analyze's own path: processor -> encode -> forward."""
    records = read_manifest(data, "dev")
    out = {t: [] for t in TASKS}
    with torch.no_grad():
        for first in range(0, len(records), 16):
            batch = model.processor.collate([model.processor(r, i) for i, r in enumerate(records[first:first + 16])])
            features = model.encode(batch)
            result = model(**features, attention_mask=batch["attention_mask"])  # the face expert abstains (no video stream)
            out["emotion"].append(result.emotion_logits)
            out["sentiment"].append(result.sentiment_logits)
    labels = {"emotion": torch.tensor([EMOTIONS.index(r.emotion) for r in records]),
              "sentiment": torch.tensor([SENTIMENTS.index(r.sentiment) for r in records])}
    return metrics({t: torch.cat(v) for t, v in out.items()}, labels)


def row(name: str, m: dict) -> str:
    return f"| {name} | " + " | ".join(f"{pct(m[t][k])}" for t in TASKS for k in ("accuracy", "weighted_f1", "macro_f1")) + " |"


HEADER = ("| | emotion acc | emotion w-F1 | emotion macro-F1 | sentiment acc | sentiment w-F1 | sentiment macro-F1 |\n"
          "|---|---|---|---|---|---|---|")


CARD = {
    "summary": "late fusion of a MELD text expert, a RAVDESS voice expert and the FER2013 face network; English",
    "experts": ["text: all-MiniLM-L6-v2, top 2 layers fine-tuned on MELD train (TV dialogue)",
                "voice: frozen Whisper-base encoder + a trained head, RAVDESS actors 01-14 (acted speech)",
                "face: the FER2013 mini-XCEPTION network (emosent/weights), MTCNN face detection"],
    "licence": ["non-commercial use only: text/ GPL-3.0 (from MELD), audio/ CC BY-NC-SA 4.0 (from RAVDESS), "
                "face network MIT; see MODEL_CARD.md"],
}


FACE_NETWORK_NAMES = {"fer2013-mini-xception": "the FER2013 mini-XCEPTION network",
                      "faceapi-expression": "face-api.js's expression network (@vladmandic/face-api 1.7.15)"}


def face_card(card: dict, networks: list[str], pooling: str) -> dict:
    """CARD with the face expert's networks as built (two: their distributions averaged)."""
    names = " and ".join(FACE_NETWORK_NAMES[n] for n in networks)
    face = f"face: {names}{', averaged' if len(networks) > 1 else ''} (emosent/weights), MTCNN face detection, {pooling} over frames"
    return {**card, "experts": [*card["experts"][:2], face]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "builtin", help="run folders, logs and the feature cache")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "emosent" / "builtin", help="the built-in model folder to write")
    parser.add_argument("--experts", type=Path, default=None,
                        help="take the text and voice experts from this built-in folder instead of training them")
    parser.add_argument("--face-networks", nargs="+", choices=list(FACE_WEIGHTS), default=["fer2013-mini-xception"],
                        help="the face expert's networks (two: their distributions averaged); BENCHMARKS.md, Faces")
    parser.add_argument("--face-pooling", choices=POOLINGS, default="mean", help="how the face expert pools a clip's frames")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine.describe()}")
    ravdess_csvs = write_ravdess_csvs(RAVDESS, args.work / "ravdess")
    if args.experts:
        text_dir, audio_dir = args.experts / "text", args.experts / "audio"
    else:
        text_dir = train_expert("text", MELD, TEXT, args.work)
        audio_dir = train_expert("audio", ravdess_csvs, AUDIO, args.work)
    text, audio = load_pretrained(text_dir), load_pretrained(audio_dir)
    face = FaceExpressionModel(sentiment_given_emotion(read_manifest(MELD, "train")), text.processor.config,
                               networks=tuple(args.face_networks), pooling=args.face_pooling)
    face_logits, face_y, centre = face_predictions(face)
    every = torch.ones(len(centre), dtype=torch.bool)
    face_t = fit_temperature((face_logits["emotion"], face_logits["sentiment"], every), face_y)
    staging = args.work / "fused"  # fuse writes a new folder; it is copied to --out with the card below
    if staging.exists():
        shutil.rmtree(staging)
    fusion_card = face_card(CARD, args.face_networks, args.face_pooling)
    fused = fuse({"text": text, "audio": audio, "face": face}, staging, rule="mean", card=fusion_card, cache_dir=args.work / "cache",
                 calibrate={"text": (MELD, "dev"), "audio": (ravdess_csvs, "dev")}, temperatures={"face": face_t})
    temperature = {name: spec.temperature for name, spec in fused.config.experts.items()}
    text_lp, text_y, _ = dev_predictions(text, MELD, args.work)
    audio_lp, audio_y, audio_features = dev_predictions(audio, ravdess_csvs, args.work)
    face_lp = {t: face_logits[t].log_softmax(-1) for t in TASKS}
    experts = {"text": (text_lp, text_y), "audio": (audio_lp, audio_y), "face": (face_lp, face_y)}
    calibrated = {name: ({t: (lp[t] / temperature[name]).log_softmax(-1) for t in TASKS}, y)
                  for name, (lp, y) in experts.items()}
    tables = []
    meld_rows = baselines(MELD, args.work / "cache")
    tables.append(("MELD dev (text; the built-in model's text expert)",
                   [row(r.name, r.metrics) for r in meld_rows] + [row("**text expert**", metrics(text_lp, text_y))]))
    train_features = extract_features(audio, read_manifest(ravdess_csvs, "train"), "train", args.work / "cache", num_workers=0)
    labels = {"train": {t: train_features.tensors[t].tolist() for t in TASKS}, "dev": {t: audio_y[t].tolist() for t in TASKS}}
    audio_lr = fit_lr(train_features.tensors["audio_features"].numpy(), audio_features.tensors["audio_features"].numpy(), labels)
    majority = {t: Counter(labels["train"][t]).most_common(1)[0][0] for t in TASKS}
    majority_row = {t: scores([majority[t]] * len(audio_y[t]), labels["dev"][t], len(TASKS[t])) for t in TASKS}
    tables.append(("RAVDESS actors 15-18 (voice; unseen speakers)",
                   [row("majority", majority_row), row("frozen Whisper-base (mean, std) + logistic regression", audio_lr),
                    row("**voice expert**", metrics(audio_lp, audio_y)),
                    row("**built-in model** (voice + the spoken sentence, through analyze's path)", ravdess_end_to_end(fused, ravdess_csvs))]))
    centre_m = {"emotion": scores(centre, face_y["emotion"].tolist(), 7), "sentiment": scores(
        [SENTIMENTS.index(SENTIMENT_OF[EMOTIONS[c]]) for c in centre], face_y["sentiment"].tolist(), 3)}
    tables.append(("190 face photos (faces; sentiment derived from the labelled emotion)",
                   [row("majority", {t: scores([int(face_y[t].mode().values)] * len(face_y[t]), face_y[t].tolist(), len(TASKS[t]))
                                     for t in TASKS}),
                    row("the face expert's networks on a centre crop, no detection", centre_m),
                    row("**face expert** (detected, aligned crop)", metrics(face_lp, face_y))]))
    rules = {"text alone": {"text": 1.0},
             "mean of probabilities, equal weights (chosen)": "mean",
             "product, equal weights": {"text": 1.0, "audio": 1.0, "face": 1.0},
             "product, voice and face at 0.5": {"text": 1.0, "audio": 0.5, "face": 0.5}}
    tables.append(("Label-paired dev triples (MELD dev x RAVDESS 15-18 x photos of the same emotion; seeds 0-2)",
                   [row(name, m) for name, m in paired(calibrated, rules).items()]))

    fused.save_pretrained(args.out)
    report = "\n\n".join(f"#### {title}\n\n{HEADER}\n" + "\n".join(lines) for title, lines in tables)
    temperatures = ", ".join(f"{k} {t}" for k, t in temperature.items())
    card = (REPO / "tools" / "model_card.md").read_text()
    (args.out / "MODEL_CARD.md").write_text(card.replace("{figures}", report).replace("{temperatures}", temperatures))
    print(report)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"\nbuilt-in model: {args.out} ({size / 1e6:.1f} MB); figures and card: {args.out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

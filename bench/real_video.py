"""Every expert alone, the fused model and the majority class on the shared real data, in one run.

What a model (the built-in one by default) does on real people, from ../shared/data:

* the 12 real CREMA-D clips (6 audio-video clips of actor 1001, 6 audio clips of actor 1002, one
  per class; the same flat sentence "Don't forget a jacket") and the 11 GRID talking faces (read
  commands, neutral), clip by clip: too few for a score, so every answer is shown;
* each expert on its own labelled dev data: the text expert on MELD dev (beside the majority class
  and a logistic regression on frozen MiniLM features), the voice expert on RAVDESS actors 15-18
  (beside the majority class and a logistic regression on the same frozen Whisper features), the
  face expert on the 190 face photos (beside the majority class);
* the fusion rules on label-paired dev triples: each MELD dev utterance (words of a TV dialogue)
  or each RAVDESS dev clip's own sentence (flat acted words, as in the real clips) with a RAVDESS
  dev voice and a face photo of the same emotion (seeds 0-2). No real data here has labelled
  words, voice and face together, so this is the only joint measurement; it flatters the voice
  and face experts (in their own domain there). A fitted rule is fitted on one half of the rows
  (MELD dev's even dialogues, RAVDESS actors 15-16, the even photos) and scored on the other.

The expert outputs come from the package's own path (emosent.fit.expert_outputs: processor ->
frozen features -> each expert), the figures from emosent.metrics. `--card FILE` writes the
report (markdown) for the model card; tools/build_builtin.py uses `fit_rule` to fit the built-in
model's fusion.

Run: .venv/bin/python bench/real_video.py [--model builtin|FOLDER] [--work runs/real_video] [--card FILE]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from emosent.builtin import load_model
from emosent.data.faces import crop_faces
from emosent.fit import expert_outputs, fit_fusion, one_expert_outputs
from emosent.fusion import LateFusionModel
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.model import EmotionSentimentOutput

import machine
from faces import as_frame, centre_crop, centre_crop_rgb, read_labels
from meld_text import MELD, TASKS, baselines, fit_lr, pct, scores
from real_data import SENTIMENT_OF, write_ravdess_csvs

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RAVDESS, FACES, VIDEO = DATA / "ravdess16k", DATA / "faces", DATA / "video"
SEEDS = (0, 1, 2)
METRICS = ("accuracy", "weighted_f1", "macro_f1")


def clip_manifests(work: Path) -> dict[str, Path]:
    """The CREMA-D and GRID clips as emosent manifests (test split; GRID is read neutral)."""
    out = {}
    for name, labels, rows in (
            ("crema-d", VIDEO / "crema-d" / "labels.csv", lambda r: (r["path"], r["text"], r["emotion"], r["sentiment"])),
            ("grid", VIDEO / "grid" / "transcripts.csv", lambda r: (r["path"], r["reference_transcript"], "neutral", "neutral"))):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(labels, newline="") as f, open(folder / "test.csv", "w", newline="") as g:
            writer = csv.writer(g)
            writer.writerow(["path", "text", "emotion", "sentiment"])
            for r in csv.DictReader(f):
                path, *rest = rows(r)
                writer.writerow([labels.parent / path, *rest])
        out[name] = folder
    return out


def photo_outputs(face) -> tuple[tuple, dict]:
    """The face expert on the 190 photos (a centre crop where no face is found, as bench/faces.py):
    ((emotion, sentiment, present), labels)."""
    from PIL import Image

    rows = read_labels(FACES)
    settings, one = face.processor.config, torch.ones(1, 1, dtype=torch.bool)
    rgb = face.processor.face_rgb  # the crops this expert's processor makes: grey 64 or RGB 128
    centred = centre_crop_rgb if rgb else centre_crop  # (C, S, S): one frame's crop
    emotion, sentiment = [], []
    with torch.no_grad():
        for path, _ in rows:
            image = Image.open(path)
            faces, found = crop_faces(as_frame(image)[None], settings.face_margin, settings.face_detect_size, rgb=rgb)
            out = face(faces=(faces[0] if found[0] else centred(image))[None, None], face_mask=one)
            emotion.append(out.emotion_logits[0])
            sentiment.append(out.sentiment_logits[0])
    labels = {"emotion": torch.tensor([EMOTIONS.index(e) for _, e in rows]),
              "sentiment": torch.tensor([SENTIMENTS.index(SENTIMENT_OF[e]) for _, e in rows])}
    return (torch.stack(emotion), torch.stack(sentiment), torch.ones(len(rows), dtype=torch.bool)), labels


def own_outputs(model: LateFusionModel, ravdess: Path, cache: Path, photos: tuple | None = None) -> dict:
    """Each expert on its own labelled dev data, by modality: text on MELD dev, voice on RAVDESS
    15-18, face on the photos (`photos`: `photo_outputs` of the same face expert, if computed);
    plus the text expert on RAVDESS 15-18's own sentences ("flat")."""
    by = model.by_modality
    out = {"text": one_expert_outputs(model.experts[by["text"]], MELD, "dev", cache),
           "flat": one_expert_outputs(model.experts[by["text"]], ravdess, "dev", cache),
           "audio": one_expert_outputs(model.experts[by["audio"]], ravdess, "dev", cache),
           "video": photos or photo_outputs(model.experts[by["video"]])}
    return out


def halves(own: dict, ravdess: Path) -> dict[str, list[torch.Tensor]]:
    """Row indices of each source's two halves (fit, score): MELD dev by dialogue parity, RAVDESS
    by actor (15-16, 17-18), photos by parity."""
    with open(MELD / "dev_sent_emo.csv", newline="") as f:
        dialogue = torch.tensor([int(r["Dialogue_ID"]) for r in csv.DictReader(f)])
    with open(ravdess / "dev.csv", newline="") as f:
        actor = torch.tensor([int(Path(r["path"]).stem.split("-")[-1]) for r in csv.DictReader(f)])
    n_photos = len(own["video"][1]["emotion"])
    if len(dialogue) != len(own["text"][1]["emotion"]):
        raise SystemExit("MELD dev rows and the text expert's outputs differ in number: was a row skipped?")
    split = {"text": dialogue % 2 == 0, "audio": actor <= 16, "video": torch.arange(n_photos) % 2 == 0}
    split["flat"] = split["audio"]
    return {k: [torch.nonzero(v).flatten(), torch.nonzero(~v).flatten()] for k, v in split.items()}


def triples(model: LateFusionModel, own: dict, words: str, seed: int, rows: dict | None = None) -> tuple[dict, dict]:
    """Label-paired rows: each row of `words` ("text": MELD dev, "flat": RAVDESS sentences) with a
    voice and a face of the same emotion drawn with `seed` (from `rows`' indices when given)."""
    by = model.by_modality
    (te, ts, tp), labels = own[words]
    pick = rows or {k: torch.arange(len(own[k][1]["emotion"])) for k in own}
    keep = pick[words]
    g = torch.Generator().manual_seed(seed)
    outputs = {by["text"]: (te[keep], ts[keep], tp[keep])}
    for modality in ("audio", "video"):
        (e, s, p), y = own[modality]
        pools = [pick[modality][y["emotion"][pick[modality]] == k] for k in range(len(EMOTIONS))]
        idx = torch.stack([pools[int(k)][int(torch.randint(len(pools[int(k)]), (1,), generator=g))]
                           for k in labels["emotion"][keep]])
        outputs[by[modality]] = (e[idx], s[idx], p[idx])
    return outputs, {t: labels[t][keep] for t in TASKS}


def fused(model: LateFusionModel, outputs: dict, config=None) -> dict:
    outs = {n: EmotionSentimentOutput(e, s, present=p) for n, (e, s, p) in outputs.items()}
    with torch.no_grad():
        f = model.fuse(outs, config)
    return {"emotion": f.emotion_logits, "sentiment": f.sentiment_logits}


def metrics(log_probs: dict, labels: dict) -> dict:
    return {t: scores(log_probs[t].argmax(-1).tolist(), labels[t].tolist(), len(TASKS[t])) for t in TASKS}


def fit_rule(model: LateFusionModel, own: dict, rows: dict | None = None, rule: str = "product"):
    """The fusion `rule` with the experts' weights and temperatures fitted (emosent.fit.fit_fusion)
    on label-paired triples of both kinds of words, seed 0; the class biases stay 0."""
    parts = [triples(model, own, words, 0, rows) for words in ("text", "flat")]
    outputs = {n: tuple(torch.cat([p[0][n][i] for p in parts]) for i in range(3)) for n in parts[0][0]}
    labels = {t: torch.cat([p[1][t] for p in parts]) for t in TASKS}
    start = replace(model.config, rule=rule)
    # no class biases: the triples' class mix (MELD dev's beside RAVDESS's) is no real domain's prior
    return fit_fusion(LateFusionModel(dict(model.experts.items()), start), outputs, labels, biases=False)


def rules_table(model: LateFusionModel, own: dict, ravdess: Path, clips: dict) -> list[str]:
    """Fusion rules on the held-out half of the triples (mean over SEEDS) and on the real clips."""
    split = halves(own, ravdess)
    fit_rows, score_rows = {k: v[0] for k, v in split.items()}, {k: v[1] for k, v in split.items()}
    equal = {n: replace(s, weight=1.0) for n, s in model.config.experts.items()}
    rules = {"the model's own fusion (tools/build_builtin.py fits it on all the triples: in-sample here)": model.config,
             "mean, equal weights": replace(model.config, rule="mean", experts=equal, emotion_bias=[0.0] * 7, sentiment_bias=[0.0] * 3),
             "product, equal weights": replace(model.config, rule="product", experts=equal, emotion_bias=[0.0] * 7, sentiment_bias=[0.0] * 3),
             "mean, fitted on the other half": fit_rule(model, own, fit_rows, "mean"),
             "product, fitted on the other half": fit_rule(model, own, fit_rows, "product")}
    lines = []
    for name, config in rules.items():
        cells = []
        for words in ("text", "flat"):
            runs = [metrics(fused(model, outputs, config), labels)
                    for outputs, labels in (triples(model, own, words, seed, score_rows) for seed in SEEDS)]
            cells += [pct(np.mean([r["emotion"]["accuracy"] for r in runs])), pct(np.mean([r["emotion"]["macro_f1"] for r in runs]))]
        for clip_set in ("crema-d", "grid"):
            outputs, labels = clips[clip_set]
            right = (fused(model, outputs, config)["emotion"].argmax(-1) == labels["emotion"]).sum()
            cells.append(f"{int(right)}/{len(labels['emotion'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return ["| rule | MELD words: emotion acc | macro-F1 | flat words: emotion acc | macro-F1 | CREMA-D clips | GRID clips |",
            "|---|---|---|---|---|---|---|", *lines]


def clip_table(model: LateFusionModel, name: str, outputs: dict, labels: dict) -> list[str]:
    """Clip by clip: the label, each expert's answer (-- where it abstained) and the fused one."""
    with open(Path(name) / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    f = fused(model, outputs)
    experts = list(outputs)
    lines = [f"| clip | label | {' | '.join(experts)} | fused (emotion, sentiment) |", "|---|---|" + "---|" * (len(experts) + 1)]
    right = Counter()
    for i, r in enumerate(rows):
        cells = []
        for n in experts:
            e, _, p = outputs[n]
            k = int(e[i].argmax())
            cells.append(f"{EMOTIONS[k]} {float(e[i].softmax(-1)[k]):.2f}" if p[i] else "--")
            right[n] += bool(p[i]) and k == int(labels["emotion"][i])
        k, s = int(f["emotion"][i].argmax()), int(f["sentiment"][i].argmax())
        right["fused"] += k == int(labels["emotion"][i])
        right["majority (neutral)"] += EMOTIONS[int(labels["emotion"][i])] == "neutral"
        lines.append(f"| {Path(r['path']).name} | {r['emotion']} | {' | '.join(cells)} | {EMOTIONS[k]} "
                     f"{float(f['emotion'][i].exp()[k]):.2f}, {SENTIMENTS[s]} |")
    total = ", ".join(f"{n} {right[n]}" for n in (*experts, "fused", "majority (neutral)"))
    return lines + ["", f"Right (emotion) of {len(rows)}: {total}."]


def row(name: str, m: dict) -> str:
    return f"| {name} | " + " | ".join(pct(m[t][k]) for t in TASKS for k in METRICS) + " |"


HEADER = ["| | emotion acc | emotion w-F1 | emotion macro-F1 | sentiment acc | sentiment w-F1 | sentiment macro-F1 |",
          "|---|---|---|---|---|---|---|"]


def majority(train: dict, dev: dict) -> dict:
    return {t: scores([Counter(train[t]).most_common(1)[0][0]] * len(dev[t]), list(dev[t]), len(TASKS[t])) for t in TASKS}


def expert_tables(model: LateFusionModel, own: dict, ravdess: Path, cache: Path) -> list[tuple[str, list[str]]]:
    """Each expert alone on its own dev data, beside the majority class and a logistic regression."""
    from emosent.data import read_manifest
    from emosent.features import extract_features

    text_rows = baselines(MELD, cache)
    audio = model.experts[model.by_modality["audio"]]
    train = extract_features(audio, read_manifest(ravdess, "train"), "train", cache, num_workers=0)
    dev = extract_features(audio, read_manifest(ravdess, "dev"), "dev", cache, num_workers=0)
    labels = {"train": {t: train.tensors[t].tolist() for t in TASKS}, "dev": {t: dev.tensors[t].tolist() for t in TASKS}}
    lr = fit_lr(train.tensors["audio_features"].reshape(len(train), -1).numpy(),
                dev.tensors["audio_features"].reshape(len(dev), -1).numpy(), labels)
    photos_y = own["video"][1]
    tables = [("MELD dev (the text expert)", [row(r.name, r.metrics) for r in text_rows]
               + [row("**text expert**", metrics({"emotion": own["text"][0][0], "sentiment": own["text"][0][1]}, own["text"][1]))]),
              ("RAVDESS actors 15-18 (the voice expert; unseen speakers, the training sentences)",
               [row("majority", majority(labels["train"], labels["dev"])),
                row("frozen audio features + logistic regression", lr),
                row("**voice expert**", metrics({"emotion": own["audio"][0][0], "sentiment": own["audio"][0][1]}, own["audio"][1]))]),
              ("190 face photos (the face expert; sentiment derived from the labelled emotion)",
               [row("majority", majority({t: photos_y[t].tolist() for t in TASKS}, {t: photos_y[t].tolist() for t in TASKS})),
                row("**face expert**", metrics({"emotion": own["video"][0][0], "sentiment": own["video"][0][1]}, photos_y))])]
    return tables


def report(model: LateFusionModel, work: Path, own: dict | None = None) -> str:
    """The whole report, as markdown (`own`: `own_outputs` of the same experts, if computed)."""
    cache = work / "cache"
    ravdess = write_ravdess_csvs(RAVDESS, work / "ravdess")
    manifests = clip_manifests(work)
    clips = {name: expert_outputs(model, folder, "test", cache) for name, folder in manifests.items()}
    own = own or own_outputs(model, ravdess, cache)
    sections = [(f"Real clips: {name} (clip by clip)", clip_table(model, str(manifests[name]), *clips[name]))
                for name in manifests]
    sections += [(title, HEADER + lines) for title, lines in expert_tables(model, own, ravdess, cache)]
    sections.append(("Fusion rules: label-paired dev triples (held-out half, seeds 0-2) and the real clips",
                     rules_table(model, own, ravdess, clips)))
    return "\n\n".join(f"#### {title}\n\n" + "\n".join(lines) for title, lines in sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin", help="a late-fusion model folder, or builtin")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "real_video", help="manifests and the feature cache")
    parser.add_argument("--card", type=Path, default=None, help="also write the report (markdown) to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    if not isinstance(model, LateFusionModel) or set(model.by_modality) != {"text", "audio", "video"}:
        raise SystemExit(f"{args.model}: a late fusion of a text, a voice and a face expert is what this compares")
    print(f"machine: {machine.describe()}\nmodel: {args.model}\n")
    text = report(model, args.work)
    print(text)
    if args.card:
        args.card.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rebuild the built-in model (src/emosent/builtin) from ../shared/data, with its model card.

One command: .venv/bin/python tools/build_builtin.py [--work runs/builtin] [--out src/emosent/builtin]
[--experts FOLDER] [--text FOLDER] [--audio FOLDER] [--face FOLDER]
[--face-networks faceapi-expression ...] [--face-pooling mean|confident] [--face-mirror both|alternate]

1. The experts: each taken from a folder (--text/--audio/--face, or all from --experts, e.g. the
   current built-in folder) or trained by the public `emosent train`: the text expert on MELD
   (all-MiniLM-L6-v2, top 2 layers fine-tuned, sqrt class weights, 4 epochs, seed 0: BENCHMARKS'
   recommended MELD row), the voice expert on RAVDESS actors 01-14 (the frozen Whisper-base
   encoder, 60 epochs, seed 0). The face expert is built from the packaged networks named by
   --face-networks (FER2013, face-api.js, or both averaged; --face-pooling over frames;
   --face-mirror: every crop with its mirror image, or every other frame mirrored), with
   the built-in face expert's P(sentiment | emotion) table (counted on MELD train), unless --face
   names a folder.
2. `emosent.fit.fuse`: each expert's temperature fitted on its own dev data (MELD dev, RAVDESS
   15-18; the face expert's on the 190 photos, which are not a manifest, with the same
   `fit_temperature`).
3. The fusion rule and its numbers, by `emosent.fit.fit_fusion` on label-paired dev triples with
   both kinds of words (bench/real_video.py `fit_rule`): the product of the calibrated experts,
   with fitted weights and class biases (why: BENCHMARKS.md, "Fusion rules").
4. The folder (config.json, text/, audio/, face/) and MODEL_CARD.md with bench/real_video.py's
   report on the result.
Trained experts are kept in --work and reused when their model exists (delete it to retrain).
Needs scikit-learn for the baselines: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import machine  # noqa: E402
import real_video  # noqa: E402
from meld_text import MELD, run  # noqa: E402
from real_data import write_ravdess_csvs  # noqa: E402

from emosent.builtin import BUILTIN_DIR  # noqa: E402
from emosent.encoders.faces import MIRRORS, POOLINGS  # noqa: E402
from emosent.fit import fit_temperature, fuse  # noqa: E402
from emosent.fusion import FACE_WEIGHTS, FaceExpressionModel, LateFusionModel  # noqa: E402
from emosent.pretrained import load_pretrained  # noqa: E402

COMMON = ["--text-encoder", "minilm", "--video-weights", "none", "--seed", "0"]
TRAIN = {"text": ["--modalities", "text", "--pooling", "mean", "--finetune-text-layers", "2", "--class-weights", "sqrt", "--epochs", "4"],
         "audio": ["--modalities", "audio", "--audio-encoder", "whisper-base", "--epochs", "60"]}
CARD = {
    "summary": "late fusion of a MELD text expert, a RAVDESS voice expert and a face expert; English",
    "experts": ["text: all-MiniLM-L6-v2, top 2 layers fine-tuned on MELD train (TV dialogue)",
                "voice: frozen Whisper-base encoder + a trained head, RAVDESS (acted speech)",
                "face: {networks} (emosent/weights), MTCNN face detection, {pooling} over frames, {mirror}"],
    "licence": ["non-commercial use only: text/ GPL-3.0 (from MELD), audio/ CC BY-NC-SA 4.0 (from RAVDESS), "
                "face networks MIT; see MODEL_CARD.md"],
}


FACE_NETWORK_NAMES = {"fer2013-mini-xception": "the FER2013 mini-XCEPTION network",
                      "faceapi-expression": "face-api.js's expression network (@vladmandic/face-api 1.7.15)"}


MIRROR_NAMES = {"both": "each crop read with its mirror image", "alternate": "every other frame read mirrored"}


def face_expert(networks: list[str], pooling: str, mirror: str) -> FaceExpressionModel:
    shipped = load_pretrained(BUILTIN_DIR / "face")
    return FaceExpressionModel(shipped.sentiment_given_emotion.tolist(), shipped.processor.config,
                               networks=tuple(networks), pooling=pooling, mirror=mirror)


def expert_folder(name: str, given: Path | None, data: Path, work: Path) -> Path:
    if given is not None:
        return given
    model = work / name / "model"
    if not (model / "config.json").is_file():
        seconds, peak, _ = run(["train", "--data", str(data), "--out", str(work / name), *COMMON, *TRAIN[name],
                                "--cache-dir", str(work / "cache"), "--num-workers", "0"], work / "logs" / f"{name}-train.log")
        print(f"{name} expert: trained in {seconds:.0f} s, peak {peak:.0f} MB")
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "builtin", help="run folders, logs and the feature cache")
    parser.add_argument("--out", type=Path, default=BUILTIN_DIR, help="the built-in model folder to write")
    parser.add_argument("--experts", type=Path, default=None, help="take every expert from this built-in folder")
    for name in ("text", "audio", "face"):
        parser.add_argument(f"--{name}", type=Path, default=None, help=f"take the {name} expert from this model folder")
    parser.add_argument("--face-networks", nargs="+", choices=list(FACE_WEIGHTS), default=["faceapi-expression"],
                        help="the face expert's networks (two: their distributions averaged); BENCHMARKS.md, Faces")
    parser.add_argument("--face-pooling", choices=POOLINGS, default="mean", help="how the face expert pools a clip's frames")
    parser.add_argument("--face-mirror", choices=MIRRORS, default="alternate",
                        help="each crop read with its mirror image (both), or every other frame mirrored (alternate: half the cost)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine.describe()}")
    cache, ravdess = args.work / "cache", write_ravdess_csvs(real_video.RAVDESS, args.work / "ravdess")
    given = {n: getattr(args, n) or (args.experts / n if args.experts else None) for n in ("text", "audio", "face")}
    experts = {"text": expert_folder("text", given["text"], MELD, args.work),
               "audio": expert_folder("audio", given["audio"], ravdess, args.work)}
    face = load_pretrained(given["face"]) if given["face"] else face_expert(args.face_networks, args.face_pooling, args.face_mirror)
    card = {**CARD, "experts": [e.format(networks=" and ".join(FACE_NETWORK_NAMES[n] for n in face.networks)
                                         + (", averaged" if len(face.networks) > 1 else ""), pooling=face.pooling,
                                         mirror=MIRROR_NAMES[face.mirror])
                                for e in CARD["experts"]]}
    photos = real_video.photo_outputs(face)
    face_t = fit_temperature(*photos)
    staging = args.work / "fused"  # fuse writes a new folder; the fitted model goes to --out
    if staging.exists():
        shutil.rmtree(staging)
    fused = fuse({**experts, "face": face}, staging, card=card, cache_dir=cache, temperatures={"face": face_t},
                 calibrate={"text": (MELD, "dev"), "audio": (ravdess, "dev")})
    own = real_video.own_outputs(fused, ravdess, cache, photos)
    config = real_video.fit_rule(fused, own)
    model = LateFusionModel(dict(fused.experts.items()), replace(config, card=card)).eval()
    final = args.work / "final"  # written whole before --out is replaced (--out may hold the experts read above)
    if final.exists():
        shutil.rmtree(final)
    model.save_pretrained(final)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(final, args.out)
    report = real_video.report(model, args.work, own)
    numbers = ", ".join(f"{n}: temperature {s.temperature}, weight {s.weight}" for n, s in config.experts.items())
    card = (REPO / "tools" / "model_card.md").read_text()
    (args.out / "MODEL_CARD.md").write_text(card.replace("{figures}", report).replace("{fusion}", numbers))
    print(report)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"\nbuilt-in model: {args.out} ({size / 1e6:.1f} MB); card: {args.out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write tests/fixtures/faceapi_reference.json: face-api's own FaceExpressionNet, run by
TensorFlow.js in Node, on real face crops; tests/test_faceapi_network.py holds the PyTorch port
to these numbers. Run once (needs node, npm and ../shared/data/faces):

    cd /tmp/faceapi && npm pack @vladmandic/face-api@1.7.15 && tar xzf vladmandic-face-api-1.7.15.tgz \
        && npm install --no-save @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0
    PYTHONPATH=src .venv/bin/python tools/make_faceapi_reference.py --package /tmp/faceapi/package

The crops: the central square of the first photo of each emotion in labels.csv (the photos are
roughly centred faces), resized by PIL to 112 x 112 RGB uint8 (`reference_crop`), so the test
rebuilds the identical input from the photo; its sha256 is stored to prove it. The fixture holds
no pixels (the photos stay in ../shared/data), only Node's outputs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emosent.faceapi_network import FACEAPI_INPUT_SIZE, load_faceapi_network, preprocess

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "faces"
FIXTURE = REPO / "tests" / "fixtures" / "faceapi_reference.json"


def reference_crop(path: Path) -> np.ndarray:
    """(112, 112, 3) uint8: the photo's central square, RGB, PIL bilinear resize."""
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE), Image.BILINEAR), np.uint8)


def first_of_each_emotion(data: Path) -> list[str]:
    with open(data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen, out = set(), []
    for row in rows:
        if row["emotion"] not in seen:
            seen.add(row["emotion"])
            out.append(row["path"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="the unpacked npm tarball (its package/ folder)")
    parser.add_argument("--node-modules", type=Path, help="where @tensorflow/tfjs is installed (default: beside --package)")
    args = parser.parse_args()
    photos = first_of_each_emotion(DATA)
    crops = np.stack([reference_crop(DATA / p) for p in photos])
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "crops.u8", Path(tmp) / "out.json"
        raw.write_bytes(crops.tobytes())
        env = {**os.environ, "NODE_PATH": str(args.node_modules or args.package.resolve().parent / "node_modules")}
        subprocess.run(["node", str(REPO / "tools" / "faceapi_reference.cjs"), str(args.package), str(raw), str(len(crops)), str(out)],
                       check=True, env=env)
        node = json.loads(out.read_text())
    with torch.no_grad():
        features, logits = load_faceapi_network().penultimate_and_logits(preprocess(torch.from_numpy(crops).permute(0, 3, 1, 2)))
    diffs = {"features": (features - torch.tensor(node["features"])).abs().max().item(),
             "logits": (logits - torch.tensor(node["logits"])).abs().max().item(),
             "probabilities": (logits.softmax(-1) - torch.tensor(node["probabilities"])).abs().max().item()}
    fixture = {
        "how": "tools/make_faceapi_reference.py: face-api's FaceExpressionNet (dist/face-api.node-wasm.js) in Node "
               f"{subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}, "
               f"TensorFlow.js {node['tfjs_version']} {node['backend']} backend, @vladmandic/face-api {node['faceapi_version']}",
        "crop": "tools/make_faceapi_reference.py:reference_crop (central square, PIL bilinear to 112 x 112 RGB uint8)",
        "photos": photos,
        "crop_sha256": [hashlib.sha256(c.tobytes()).hexdigest() for c in crops],
        "logits": node["logits"], "probabilities": node["probabilities"],
        "features": [[round(v, 7) for v in row] for row in node["features"]],
        "port_max_abs_difference_when_made": diffs,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {FIXTURE} ({len(photos)} crops); port vs Node, max abs difference: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))


if __name__ == "__main__":
    sys.exit(main())

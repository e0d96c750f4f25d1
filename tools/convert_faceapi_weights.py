"""Convert face-api.js's face-expression network (TensorFlow.js weights) to emosent's safetensors.

Run once; its outputs in src/emosent/weights/ are committed:

    .venv/bin/python tools/convert_faceapi_weights.py             # npm pack @vladmandic/face-api@1.7.15
    .venv/bin/python tools/convert_faceapi_weights.py --source vladmandic-face-api-1.7.15.tgz

Reads `model/face_expression_model-weights_manifest.json` and `model/face_expression_model.bin`
from the npm tarball (checked by sha256), dequantises them as TensorFlow.js's io.decodeWeights
does (uint8 q -> q * scale + min, in float64, stored as float32), and maps TF's HWIO / depthwise
(H, W, C, 1) kernels to PyTorch's OIHW. No TensorFlow is needed. The tarball's LICENSE (MIT,
Copyright (c) Vladimir Mandic) goes into weights/LICENSES.md.

Checked against the original: tools/make_faceapi_reference.py runs face-api's own
FaceExpressionNet (dist/face-api.node-wasm.js, TensorFlow.js 4.22.0 CPU backend, Node 20.20.2) on 7
real face crops (the central square of one photo per emotion in ../shared/data/faces, 112 x 112
RGB uint8) and stores its outputs in tests/fixtures/faceapi_reference.json; tests/test_faceapi_network.py
holds the port to them. Largest absolute difference, port vs Node (torch CPU, float32): the 256
pooled features 3.8e-6, logits 4.8e-6, probabilities 1.3e-6; the argmax agrees on all 7 crops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

# LICENSES.md: this converter owns the part from FACEAPI_HEADING on (tools/convert_fer_weights.py keeps it)
from convert_fer_weights import FACEAPI_HEADING as LICENSES_HEADING, save_reproducibly
from emosent.faceapi_network import (
    FACEAPI_CLASSES, FACEAPI_TO_EMOSENT, MEAN_RGB, WEIGHTS_FILE, FaceApiConfig, FaceApiExpressionNet,
)
from emosent.fer_network import sha256_of

PACKAGE = "@vladmandic/face-api"
VERSION = "1.7.15"
TARBALL = f"vladmandic-face-api-{VERSION}.tgz"
MANIFEST_MEMBER = "package/model/face_expression_model-weights_manifest.json"
BIN_MEMBER = "package/model/face_expression_model.bin"
LICENSE_MEMBER = "package/LICENSE"
BIN_SHA256 = "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d"
MANIFEST_SHA256 = "5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8"
SOURCE = f"npm {PACKAGE}@{VERSION}, model/face_expression_model.bin (face-api.js FaceExpressionNet)"
LICENSE = "MIT (@vladmandic/face-api, Copyright (c) Vladimir Mandic; a fork of face-api.js by Vincent Muehler, MIT)"
PREPROCESSING = {
    "code": "emosent.faceapi_network.preprocess",
    "colour": "RGB",
    "crop": "face-api: the detected face box (extractFaces), padded to a square, resized to 112 x 112",
    "scale": "(x - (122.782, 117.001, 104.298)) / 255 per RGB channel, x in 0..255",
    "layout": "(B, 3, 112, 112) in PyTorch; the TensorFlow.js original is (B, 112, 112, 3)",
    "output": "logits in face-api's order; the original applies softmax",
}
LICENSES_TEXT = """
`faceapi_expression.safetensors` is a format conversion (tools/convert_faceapi_weights.py) of
`model/face_expression_model.bin` and its manifest from the npm package {package}@{version}
(sha256 of the .bin {bin_sha}), Vladimir Mandic's maintained fork of face-api.js 0.22.2 by
Vincent Muehler (justadudewhohacks/face-api.js); the fork's README names face-api.js and its
model repository (justadudewhohacks/face-api.js-models) as the weights' origin. sha256 of the
converted file: {st_sha}. The licence file in the npm tarball (`package/LICENSE`, read by the
converter) follows; package.json says "license": "MIT". face-api.js's own licence file is not
in the tarball.
The package does not say what data the expression network was trained on: check before
commercial use.

## {package}@{version} (package/LICENSE)

```
{license}
```
"""


def dequantise(manifest: list[dict], blob: bytes) -> dict[str, np.ndarray]:
    """TensorFlow.js weights (a manifest and its concatenated .bin) -> name: float32 array, as
    tf.io.decodeWeights decodes them. Fails unless the .bin is consumed exactly."""
    out, offset = {}, 0
    for entry in (w for group in manifest for w in group["weights"]):
        n = int(np.prod(entry["shape"]))
        q = entry.get("quantization")
        if q is None:
            if entry["dtype"] != "float32":
                raise ValueError(f"{entry['name']}: dtype {entry['dtype']} is not float32")
            values = np.frombuffer(blob, np.float32, n, offset).copy()
            offset += 4 * n
        elif q["dtype"] == "uint8":
            values = (np.frombuffer(blob, np.uint8, n, offset).astype(np.float64) * q["scale"] + q["min"]).astype(np.float32)
            offset += n
        else:
            raise ValueError(f"{entry['name']}: quantisation {q['dtype']} is not one this converter reads")
        out[entry["name"]] = values.reshape(entry["shape"])
    if offset != len(blob):
        raise ValueError(f"the manifest describes {offset} bytes but the .bin holds {len(blob)}")
    return out


def _t(array: np.ndarray, *perm: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(perm) if perm else array))


def convert(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """face-api's weight map as a FaceApiExpressionNet state dict. Fails unless every TF.js tensor
    is used and every PyTorch tensor is filled, shape for shape."""
    config = FaceApiConfig()
    state, used = {}, set()
    for b in range(len(config.block_channels)):
        for c in range(4):
            tf_name, module = f"dense{b}/conv{c}", f"blocks.{b}.conv{c}"
            if b == 0 and c == 0:
                state[f"{module}.conv.weight"] = _t(weights[f"{tf_name}/filters"], 3, 2, 0, 1)  # HWIO -> OIHW
                state[f"{module}.conv.bias"] = _t(weights[f"{tf_name}/bias"])
                used |= {f"{tf_name}/filters", f"{tf_name}/bias"}
                continue
            state[f"{module}.depthwise.weight"] = _t(weights[f"{tf_name}/depthwise_filter"], 2, 3, 0, 1)  # (H, W, C, 1) -> (C, 1, H, W)
            state[f"{module}.pointwise.weight"] = _t(weights[f"{tf_name}/pointwise_filter"], 3, 2, 0, 1)
            state[f"{module}.pointwise.bias"] = _t(weights[f"{tf_name}/bias"])
            used |= {f"{tf_name}/depthwise_filter", f"{tf_name}/pointwise_filter", f"{tf_name}/bias"}
    state["fc.weight"] = _t(weights["fc/weights"], 1, 0)  # (in, out) -> (out, in)
    state["fc.bias"] = _t(weights["fc/bias"])
    used |= {"fc/weights", "fc/bias"}
    if set(weights) != used:
        raise ValueError(f"face-api tensors not converted: {sorted(set(weights) - used)}")
    expected = FaceApiExpressionNet(config).state_dict()
    wrong = {k: (tuple(v.shape), tuple(state[k].shape) if k in state else None) for k, v in expected.items()
             if k not in state or state[k].shape != v.shape}
    if wrong or state.keys() != expected.keys():
        raise ValueError(f"converted weights do not fit FaceApiExpressionNet: {wrong or state.keys() - expected.keys()}")
    return state


def read_tarball(path: Path) -> tuple[list[dict], bytes, str]:
    """The manifest, the .bin and the licence text from the npm tarball, the first two checked by sha256."""
    with tarfile.open(path) as tar:
        manifest_bytes, blob, license_text = (tar.extractfile(m).read() for m in (MANIFEST_MEMBER, BIN_MEMBER, LICENSE_MEMBER))
    for name, data, expected in ((MANIFEST_MEMBER, manifest_bytes, MANIFEST_SHA256), (BIN_MEMBER, blob, BIN_SHA256)):
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            raise SystemExit(f"{path}: {name} has sha256 {digest}, expected {expected} ({PACKAGE}@{VERSION}'s)")
    return json.loads(manifest_bytes), blob, license_text.decode()


def write_licence(out: Path, license_text: str, safetensors_sha256: str) -> None:
    """Replace (or add) this converter's part of LICENSES.md, leaving the FER2013 part as it is."""
    path = out / "LICENSES.md"
    existing = path.read_text() if path.is_file() else ""
    kept = existing.split(LICENSES_HEADING)[0].rstrip("\n")
    text = LICENSES_HEADING + "\n" + LICENSES_TEXT.format(package=PACKAGE, version=VERSION, bin_sha=BIN_SHA256,
                                                          st_sha=safetensors_sha256, license=license_text.strip())
    path.write_text((kept + "\n\n" if kept else "") + text)


def write_outputs(tarball: Path, out: Path) -> None:
    manifest, blob, license_text = read_tarball(tarball)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE.name
    save_reproducibly(convert(dequantise(manifest, blob)), weights, {"source": SOURCE, "bin_sha256": BIN_SHA256, "license": LICENSE})
    provenance = {
        "name": "faceapi_expression",
        "source": {"package": f"{PACKAGE}@{VERSION}", "index": f"https://www.npmjs.com/package/{PACKAGE}/v/{VERSION}",
                   "path": BIN_MEMBER.removeprefix("package/"), "upstream": "https://github.com/justadudewhohacks/face-api.js"},
        "bin_sha256": BIN_SHA256,
        "manifest_sha256": MANIFEST_SHA256,
        "safetensors_sha256": sha256_of(weights),
        "licenses": [LICENSE],
        "license_file": "LICENSES.md",
        "classes": list(FACEAPI_CLASSES),
        "to_emosent": FACEAPI_TO_EMOSENT,
        "mean_rgb": list(MEAN_RGB),
        "preprocessing": PREPROCESSING,
        "config": asdict(FaceApiConfig()),
    }
    weights.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    write_licence(out, license_text, provenance["safetensors_sha256"])
    n = sum(v.numel() for v in FaceApiExpressionNet().state_dict().values())
    print(f"wrote {weights} ({weights.stat().st_size:,} bytes, {n:,} parameters) and its .json; "
          f"sha256 {provenance['safetensors_sha256']}")


def fetch_tarball(dest: Path) -> Path:
    subprocess.run(["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}", "--pack-destination", str(dest)], check=True,
                   stdout=subprocess.DEVNULL)
    return dest / TARBALL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help=f"the npm tarball {TARBALL} (default: npm pack it into a temporary directory)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE.parent)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or fetch_tarball(Path(tmp))
        if not source.is_file():
            sys.exit(f"--source {source}: not found; give the {TARBALL} that `npm pack {PACKAGE}@{VERSION}` writes")
        write_outputs(source, args.out)


if __name__ == "__main__":
    main()

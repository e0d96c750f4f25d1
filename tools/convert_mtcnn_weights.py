"""Convert facenet-pytorch 2.6.0's MTCNN weights (data/pnet.pt, rnet.pt, onet.pt: pickled state dicts)
to the one safetensors file emosent ships (src/emosent/weights/mtcnn.safetensors).

Run once; its output is committed, with its sha256 in emosent.data.mtcnn.WEIGHTS_SHA256 and
src/emosent/weights/LICENSES.md:

    .venv/bin/python tools/convert_mtcnn_weights.py       # pip downloads facenet-pytorch==2.6.0 (no deps)
    .venv/bin/python tools/convert_mtcnn_weights.py --wheel facenet_pytorch-2.6.0-py3-none-any.whl

The .pt files are read with torch.load(weights_only=True) (tensors only, no code) after their
sha256 is checked against the ones below, as taken from the PyPI wheel.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from emosent.data.mtcnn import WEIGHTS_FILE
from pypi_weights import checked_wheel, run

VERSION = "2.6.0"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
MEMBERS = {"pnet": "facenet_pytorch/data/pnet.pt", "rnet": "facenet_pytorch/data/rnet.pt", "onet": "facenet_pytorch/data/onet.pt"}


def convert(wheel: Path, out: Path) -> None:
    tensors = {}
    with zipfile.ZipFile(checked_wheel(wheel, WHEEL_SHA256, f"facenet-pytorch {VERSION}")) as zf:
        for net, member in MEMBERS.items():
            state = torch.load(io.BytesIO(zf.read(member)), weights_only=True, map_location="cpu")
            tensors.update({f"{net}.{key}": value.contiguous() for key, value in state.items()})
    save_file(tensors, str(out), metadata={"source": f"PyPI facenet-pytorch=={VERSION}: " + ", ".join(MEMBERS.values()),
                                           "license": "MIT, Copyright (c) 2019 Timothy Esler"})


if __name__ == "__main__":
    raise SystemExit(run(__doc__.splitlines()[0], f"facenet-pytorch=={VERSION}", f"facenet_pytorch-{VERSION}-*.whl", WEIGHTS_FILE,
                         convert))

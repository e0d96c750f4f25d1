"""Convert Resemblyzer 0.1.4's GE2E voice encoder (resemblyzer/pretrained.pt: a pickled checkpoint)
to the safetensors file emosent ships (src/emosent/weights/ge2e_voice_encoder.safetensors).

Run once; its output is committed, with its sha256 in emosent.speakers.WEIGHTS_SHA256 and
src/emosent/weights/LICENSES.md:

    .venv/bin/python tools/convert_voice_encoder_weights.py       # pip downloads resemblyzer==0.1.4 (no deps)
    .venv/bin/python tools/convert_voice_encoder_weights.py --wheel Resemblyzer-0.1.4-py3-none-any.whl

Why not depend on the package: it needs webrtcvad, which has no wheel on PyPI (a C compiler at
install time), and it loads its weights with a plain torch.load (a pickle). The checkpoint is read
here with torch.load(weights_only=True) after the wheel's sha256 is checked; only the network's
tensors are kept (its optimiser state and the GE2E loss's two scalars are training-only), and the
mel filters (librosa 0.11.0's, as Resemblyzer's melspectrogram builds them) are added as `mel_basis`.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import librosa
import torch
from safetensors.torch import save_file

from emosent.speakers import N_FFT, N_MELS, SAMPLE_RATE_HZ, WEIGHTS_FILE
from pypi_weights import checked_wheel, run

VERSION = "0.1.4"
WHEEL_SHA256 = "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"
MEMBER = "resemblyzer/pretrained.pt"  # sha256 39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e
KEPT = ("lstm.", "linear.")


def convert(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(checked_wheel(wheel, WHEEL_SHA256, f"Resemblyzer {VERSION}")) as zf:
        checkpoint = torch.load(io.BytesIO(zf.read(MEMBER)), weights_only=True, map_location="cpu")
    tensors = {k: v.contiguous() for k, v in checkpoint["model_state"].items() if k.startswith(KEPT)}
    # the mel filters Resemblyzer's librosa.feature.melspectrogram builds, kept beside the weights
    tensors["mel_basis"] = torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=N_MELS)).contiguous()
    save_file(tensors, str(out), metadata={"source": f"PyPI Resemblyzer=={VERSION}: {MEMBER} (model_state)",
                                           "license": "Apache-2.0, Resemble AI (Corentin Jemine)"})


if __name__ == "__main__":
    raise SystemExit(run(__doc__.splitlines()[0], f"resemblyzer=={VERSION}", f"[Rr]esemblyzer-{VERSION}-*.whl", WEIGHTS_FILE, convert))

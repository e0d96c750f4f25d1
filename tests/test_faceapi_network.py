"""The face-api.js expression network's PyTorch port against face-api itself: stored outputs of
the original (TensorFlow.js in Node, tools/make_faceapi_reference.py) on real face crops, which
the test rebuilds from the photos in ../shared/data/faces (skipped when absent)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emosent.faceapi_network import FACEAPI_INPUT_SIZE, FaceApiExpressionNet, load_faceapi_network, pad_same_stride2, preprocess

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "faceapi_reference.json"
DATA = REPO.parent / "shared" / "data" / "faces"
# the port matched Node within 4.8e-6 (logits) when the fixture was made; float32 kernels differ by machine
TOLERANCE = 2e-5


def reference_crop(path: Path):
    spec = importlib.util.spec_from_file_location("make_faceapi_reference", REPO / "tools" / "make_faceapi_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_crop(path)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (the shared real photos) is absent")
def test_port_matches_face_api_in_node_on_real_crops():
    fixture = json.loads(FIXTURE.read_text())
    crops = [reference_crop(DATA / p) for p in fixture["photos"]]
    for photo, crop, digest in zip(fixture["photos"], crops, fixture["crop_sha256"]):
        assert hashlib.sha256(crop.tobytes()).hexdigest() == digest, f"{photo}: the crop differs from the one Node read"
    x = preprocess(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))
    with torch.no_grad():
        features, logits = load_faceapi_network().penultimate_and_logits(x)
    assert (features - torch.tensor(fixture["features"])).abs().max() < TOLERANCE
    assert (logits - torch.tensor(fixture["logits"])).abs().max() < TOLERANCE
    assert (logits.softmax(-1) - torch.tensor(fixture["probabilities"])).abs().max() < TOLERANCE
    # the crops are of different expressions: a port that ignored its input could not match
    assert len({int(row.argmax()) for row in logits}) >= 3


def test_same_padding_is_tensorflows():
    """An even side pads one pixel at the bottom/right only; an odd side one on each."""
    x = torch.ones(1, 1, 4, 5)
    padded = pad_same_stride2(x)
    assert padded.shape == (1, 1, 5, 7)
    assert padded[0, 0, -1].sum() == 0 and padded[0, 0, 0].sum() > 0  # height 4: the bottom row only
    assert padded[0, 0, :, 0].sum() == 0 and padded[0, 0, :, -1].sum() == 0  # width 5: both sides


def test_shapes_and_clear_errors():
    net = FaceApiExpressionNet().eval()
    assert sum(p.numel() for p in net.parameters()) == 323_687
    with torch.no_grad():
        features, logits = net.penultimate_and_logits(torch.randn(2, 3, FACEAPI_INPUT_SIZE, FACEAPI_INPUT_SIZE))
    assert features.shape == (2, 256) and logits.shape == (2, 7)
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        net(torch.randn(1, 3, 64, 64))


def test_corrupt_weights_are_refused(tmp_path):
    from emosent.faceapi_network import WEIGHTS_FILE

    bad = tmp_path / WEIGHTS_FILE.name
    data = bytearray(WEIGHTS_FILE.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    bad.with_suffix(".json").write_text(WEIGHTS_FILE.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="sha256"):
        load_faceapi_network(path=bad)

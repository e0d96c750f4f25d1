"""The face expert with a choice of networks (FER2013, face-api.js, both averaged) and of temporal
pooling: config.json's fields checked, folders that round-trip through emosent.load_model (the
first format too), FER2013 through the shared RGB crop as through its own grey one, and pooling
that lets a brief expression decide, and the mirror image read for every other frame only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import emosent
from emosent.data import Utterance
from emosent.data.faces import crop_faces, grey_from_rgb
from emosent.encoders.faces import FaceEnsemble, alternate_views, pool_weights
from emosent.fusion import FaceExpressionModel
from emosent.labels import EMOTIONS
from emosent.registry import FACEAPI_SOURCE, FER_SOURCE
from emosent.synthetic import write_clip

TABLE = [[1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]
BOTH = (FER_SOURCE, FACEAPI_SOURCE)


@pytest.fixture(scope="module")
def face_frame():
    """A real face (scikit-image's astronaut, public domain) as a 320x240 video frame."""
    from skimage.data import astronaut

    frame = np.full((240, 320, 3), 40, np.uint8)
    frame[:, 40:280] = np.asarray(Image.fromarray(astronaut()).resize((240, 240)))
    return frame


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory, face_frame):
    return write_clip(tmp_path_factory.mktemp("faces") / "face.mp4", duration_s=1.0, fps=25, width=320, height=240,
                      frame_fn=lambda i, t: face_frame)


def outputs(model: FaceExpressionModel, clip) -> torch.Tensor:
    u = Utterance(text="", emotion=None, sentiment=None, path=clip, source=str(clip))
    with torch.no_grad():
        return model(**model.encode(model.processor.collate([model.processor(u)]))).emotion_logits.log_softmax(-1)


def test_fer_reads_the_rgb_crop_as_its_own_grey_crop(face_frame):
    grey, found = crop_faces(face_frame[None], 0.1, 320)
    rgb, found_rgb = crop_faces(face_frame[None], 0.1, 320, rgb=True)
    assert found.all() and found_rgb.all() and rgb.shape == (1, 3, 128, 128)
    assert (grey_from_rgb(rgb) - grey).abs().max() < 1e-4  # [-1, 1] scale: float rounding only


def test_the_ensemble_round_trips_through_load_model(tmp_path, face_clip):
    model = FaceExpressionModel(TABLE, networks=BOTH).eval()
    folder = model.save_pretrained(tmp_path / "face")
    meta = json.loads((folder / "config.json").read_text())
    assert [n["source"] for n in meta["face"]["networks"]] == list(BOTH) and meta["face"]["pooling"] == "mean"
    loaded = emosent.load_model(folder)
    assert isinstance(loaded, FaceExpressionModel) and loaded.networks == BOTH and loaded.processor.face_rgb
    a, b = outputs(model, face_clip), outputs(loaded, face_clip)
    torch.testing.assert_close(a, b)
    # the mean of the two networks' distributions: each alone differs from it
    alone = [outputs(FaceExpressionModel(TABLE, networks=(n,)).eval(), face_clip) for n in BOTH]
    torch.testing.assert_close(a.exp(), (alone[0].exp() + alone[1].exp()) / 2, atol=1e-5, rtol=0)
    assert all((a - x).abs().max() > 1e-3 for x in alone)


def test_a_first_format_folder_loads_as_fer_alone_with_the_same_outputs(tmp_path, face_clip):
    model = FaceExpressionModel(TABLE).eval()
    folder = model.save_pretrained(tmp_path / "face")
    meta = json.loads((folder / "config.json").read_text())
    meta["network"] = meta.pop("face")["networks"][0]  # the first format: one FER2013 "network", no pooling
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = emosent.load_model(folder)
    assert loaded.networks == (FER_SOURCE,) and not loaded.processor.face_rgb
    torch.testing.assert_close(outputs(model, face_clip), outputs(loaded, face_clip))


@pytest.mark.parametrize("field, value, message", [
    ("networks", ["resnet"], "face.networks must be a list of one or more of"),
    ("networks", [], "networks must be a list"),
    ("networks", "fer2013-mini-xception", "networks must be a list"),
    ("networks", [{"source": FER_SOURCE, "sha256": "x"}, {"source": FER_SOURCE, "sha256": "x"}], "each once"),
    ("networks", [{"source": FACEAPI_SOURCE, "sha256": "0" * 64}], "face.networks: faceapi-expression with sha256 000000000000"),
    ("pooling", "max", "face.pooling must be one of"),
    ("mirror", "sometimes", "face.mirror must be one of"),
])
def test_bad_config_fields_are_one_line_naming_file_and_field(tmp_path, field, value, message):
    folder = FaceExpressionModel(TABLE, networks=BOTH).save_pretrained(tmp_path / "face")
    meta = json.loads((folder / "config.json").read_text())
    meta["face"][field] = value
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as err:
        emosent.load_model(folder)
    assert str(err.value).startswith(str(folder / "config.json")) and "\n" not in str(err.value)


def test_confident_pooling_lets_a_brief_expression_decide():
    """Twelve frames, a face in ten; three show a confident expression: "confident" keeps the top
    ceil(10 / 4) = 3 face frames, "mean" weighs all ten the same."""
    confidence = torch.tensor([[0.4] * 7 + [0.9, 0.95, 0.92, 0.99, 0.99]])
    mask = torch.tensor([[True] * 10 + [False, False]])
    mean, confident = (pool_weights(confidence, mask, rule)[0] for rule in ("mean", "confident"))
    torch.testing.assert_close(mean, torch.tensor([0.1] * 10 + [0.0, 0.0]))
    torch.testing.assert_close(confident, torch.tensor([0.0] * 7 + [1 / 3] * 3 + [0.0, 0.0]))
    assert pool_weights(confidence, torch.zeros_like(mask), "confident").sum() == 0  # no face: no weight


def test_the_expert_abstains_without_a_face(tmp_path):
    clip = write_clip(tmp_path / "grey.mp4", duration_s=1.0, fps=25, width=320, height=240,
                      frame_fn=lambda i, t: np.full((240, 320, 3), 90, np.uint8))
    model = FaceExpressionModel(TABLE, networks=BOTH, pooling="confident").eval()
    u = Utterance(text="", emotion=None, sentiment=None, path=clip, source=str(clip))
    with torch.no_grad():
        out = model(**model.encode(model.processor.collate([model.processor(u)])))
    assert not out.present.any() and out.emotion_logits.shape == (1, len(EMOTIONS))


def test_alternate_mirror_reads_every_other_face_frame_mirrored(face_frame):
    """Face frames in turn as they are and mirrored; a clip with one face frame both ways. Over
    identical frames the clip's mean is then what reading every crop both ways gives."""
    mask = torch.tensor([[True, False, True, True, True], [False, False, True, False, False]])
    assert alternate_views(mask).tolist() == [0, 1, 0, 1, 2]  # clip 1: four face frames; clip 2: one
    rgb, found = crop_faces(face_frame[None], 0.1, 320, rgb=True)
    assert found.all()
    both, alternate = (FaceEnsemble(BOTH, mirror=m).eval() for m in ("both", "alternate"))
    crops = rgb.expand(4, -1, -1, -1)
    with torch.no_grad():
        plain, mirrored = (both.per_frame(rgb, torch.tensor([v])) for v in (0, 1))
        assert (plain - mirrored).abs().max() > 1e-3  # the mirror image reads differently
        per_frame = alternate.per_frame(crops, torch.tensor([0, 1, 0, 2]))
        torch.testing.assert_close(per_frame, torch.cat([plain, mirrored, plain, (plain + mirrored) / 2]))
        faces, four = rgb[None].expand(1, 4, -1, -1, -1), torch.ones(1, 4, dtype=torch.bool)
        torch.testing.assert_close(alternate(faces, four), both(faces, four), atol=1e-5, rtol=0)


def test_the_mirror_choice_round_trips_and_old_folders_read_both(tmp_path, face_clip):
    model = FaceExpressionModel(TABLE, networks=(FACEAPI_SOURCE,), mirror="alternate").eval()
    folder = model.save_pretrained(tmp_path / "face")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["face"]["mirror"] == "alternate" and model.frozen_spec()["mirror"] == "alternate"
    loaded = emosent.load_model(folder)
    assert loaded.mirror == "alternate"
    torch.testing.assert_close(outputs(model, face_clip), outputs(loaded, face_clip))
    del meta["face"]["mirror"]  # a folder written before the choice existed
    (folder / "config.json").write_text(json.dumps(meta))
    old = emosent.load_model(folder)
    assert old.mirror == "both" and "mirror" not in old.frozen_spec()
    assert (outputs(old, face_clip) - outputs(model, face_clip)).abs().max() > 1e-4  # a 25-frame clip: not the same reading

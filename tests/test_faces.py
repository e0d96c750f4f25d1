"""The face video encoder (`--video-encoder face`): real faces found, cropped and read as the FER2013
network reads them; clips without faces; pooling over the frames with a face; model folders; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, solid_frames
from emosent import EmotionSentimentModel, ModelConfig
from emosent.data import Utterance
from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT
from emosent.encoders.video import FACE_PENULTIMATE, R3D_FEATURES
from emosent.synthetic import write_clip

T = 16
TINY = ("--text-encoder", "tiny", "--video-weights", "none")


def face_model(encoder: str = "face") -> EmotionSentimentModel:
    torch.manual_seed(0)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none", video_encoder=encoder,
                                             modalities=("video",))).eval()


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory):
    """A 1 s clip of a real smiling face: scikit-image's astronaut (Eileen Collins, public domain),
    shrunk into a wider frame with room around the face."""
    from skimage.data import astronaut

    face = np.asarray(Image.fromarray(astronaut()).resize((240, 240)))
    frame = np.full((240, 320, 3), 40, np.uint8)
    frame[:, 40:280] = face
    return write_clip(tmp_path_factory.mktemp("faces") / "astronaut.mp4", duration_s=1.0, fps=25, width=320, height=240,
                      frame_fn=lambda i, t: frame)


def utterance(path) -> Utterance:
    return Utterance(text="hello", emotion=None, sentiment=None, path=path, source=str(path))


def test_a_smiling_real_face_reads_as_joy(astronaut_clip):
    model = face_model()
    batch = model.processor.collate([model.processor(utterance(astronaut_clip))])
    assert batch["faces"].shape == (1, T, 1, 64, 64) and batch["face_mask"].all()  # found in every frame
    with torch.no_grad():
        features = model.encode(batch)["video_features"]  # (1, 128 penultimate + 7 logits + 1 share)
    assert features.shape == (1, FACE_PENULTIMATE + 7 + 1) and features[0, -1] == 1.0
    logits = features[0, FACE_PENULTIMATE:FACE_PENULTIMATE + 7]
    assert FER_TO_EMOSENT[FER_CLASSES[int(logits.argmax())]] == "joy", logits


def test_a_clip_without_a_face_gets_the_learned_no_face_input(tmp_path):
    clip = write_clip(tmp_path / "grey.mp4", duration_s=1.0, fps=25, width=160, height=120, frame_fn=solid_frames(160, 120))
    model = face_model()
    batch = model.processor.collate([model.processor(utterance(clip))])
    assert not batch["face_mask"].any() and not batch["faces"].any()  # counted, and the crops are empty
    with torch.no_grad():
        features = model.encode(batch)["video_features"]
        assert features[0, -1] == 0.0
        before = model(video_features=features).emotion_logits
        # whatever a no-face clip's crops hold, the head sees the no-face vector: only it moves the output
        noise = {"faces": torch.randn_like(batch["faces"]), "face_mask": batch["face_mask"]}
        torch.testing.assert_close(model(**noise).emotion_logits, before)
        model.video.no_face.copy_(torch.randn_like(model.video.no_face))
        assert not torch.allclose(model(video_features=features).emotion_logits, before)
    assert model.video.no_face.requires_grad


def test_frames_without_a_face_do_not_change_the_pooled_feature():
    model = face_model()
    g = torch.Generator().manual_seed(0)
    faces = torch.rand(1, T, 1, 64, 64, generator=g) * 2 - 1
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, ::3] = True
    other = torch.where(mask[..., None, None, None], faces, torch.rand(1, T, 1, 64, 64, generator=g))
    with torch.no_grad():
        a = model.encode({"faces": faces, "face_mask": mask})["video_features"]
        b = model.encode({"faces": other, "face_mask": mask})["video_features"]
        only = model.video.face(faces[:, mask[0]], mask[:, mask[0]])  # just the frames with a face
        mirrored = model.encode({"faces": faces.flip(-1), "face_mask": mask})["video_features"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(mirrored, a)  # each crop is read with its mirror image: left and right are one
    torch.testing.assert_close(a[:, :-1], only[:, :-1])
    assert a[0, -1] == pytest.approx(mask.float().mean().item())


def test_r3d18_plus_face_reads_both_and_round_trips_through_a_folder(astronaut_clip, tmp_path):
    model = face_model("r3d18+face")
    batch = model.processor.collate([model.processor(utterance(astronaut_clip))])
    assert batch["video"].shape == (1, T, 3, 112, 112) and batch["faces"].shape == (1, T, 1, 64, 64)
    with torch.no_grad():
        assert model.encode(batch)["video_features"].shape == (1, R3D_FEATURES + FACE_PENULTIMATE + 7 + 1)
        expected = model(**{k: batch[k] for k in ("video", "faces", "face_mask")}).emotion_logits
    folder = model.save_pretrained(tmp_path / "model")
    refs = json.loads((folder / "config.json").read_text())["frozen_encoders"]
    assert list(refs) == ["face"] and refs["face"]["source"] == "fer2013-mini-xception"  # random R3D-18 stays in the file
    loaded = EmotionSentimentModel.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**{k: batch[k] for k in ("video", "faces", "face_mask")}).emotion_logits, expected)
    with pytest.raises(ValueError, match=r"faces must be \(B, 16, 1, 64, 64\)"):
        model(video=batch["video"], faces=batch["faces"][:, :8], face_mask=batch["face_mask"][:, :8])


def test_train_and_analyze_with_the_face_encoder(sample_dir, tmp_path, astronaut_clip):
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = run_cli("train", "--data", sample_dir, "--out", run, *TINY, "--video-encoder", "face", "--modalities", "text,video",
                     "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--cache-dir", cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clips without any face" in result.stdout  # generated clips hold no faces: counted, not hidden
    assert json.loads((run / "model" / "config.json").read_text())["model_config"]["video_encoder"] == "face"
    subtitles = tmp_path / "s.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,900\nwhat a day\n")
    analysed = run_cli("analyze", astronaut_clip, "--model", run / "model", "--subtitles", subtitles, "--out", tmp_path / "r.json")
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["utterances"][0]["face_frames"] == 1.0

"""Faces in the frame (issue 26): how many faces an utterance's frames hold, and which one the face
expert reads: the speaker's where several are seen (the face whose mouth moves), on clips built
from real faces; one face alone; none in an animation (the face expert abstains)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data
from emosent.builtin import BUILTIN_DIR
from emosent.data import Utterance
from emosent.data.face_tracks import FACE_CHOICES, LARGEST, ONLY_FACE, SPEAKING_FACE, pick_faces
from emosent.data.faces import detect_faces
from emosent.data.media import load_clip
from emosent.pretrained import load_pretrained
from emosent.records import Recorder
from emosent.synthetic import write_clip

FPS = 25


@pytest.fixture(scope="module")
def face_expert():
    return load_pretrained(BUILTIN_DIR / "face").eval()


def around_face(frames: np.ndarray, face_px: int) -> np.ndarray:
    """The frames cut around the face of their middle frame and scaled to a face face_px wide."""
    x0, y0, x1, y1 = max(detect_faces(frames[len(frames) // 2][None], 640)[0], key=lambda f: f.area).box
    w, h = x1 - x0, y1 - y0
    box = (round(x0 - w / 2), round(y0 - h / 3), round(x1 + w / 2), round(y1 + h / 3))
    size = (round((box[2] - box[0]) * face_px / w) // 2 * 2, round((box[3] - box[1]) * face_px / w) // 2 * 2)
    return np.stack([np.asarray(Image.fromarray(f).crop(box).resize(size, Image.BILINEAR)) for f in frames])


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    h = max(left.shape[1], right.shape[1])
    canvas = np.full((len(left), h, left.shape[2] + right.shape[2], 3), 110, np.uint8)
    canvas[:, :left.shape[1], :left.shape[2]] = left
    canvas[:, :right.shape[1], left.shape[2]:] = right
    return canvas


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    """A real GRID speaker (every frame of its 3 s, face 90 px wide) on the left of a still real
    CREMA-D face 1.6 times as wide (the listener, larger): an H.264 clip, and the speaker's side's
    right edge."""
    grid = shared_data("video", "grid", "bbaf2n.mpg")
    crema = shared_data("video", "crema-d", "1001_DFA_NEU_XX.flv")
    speaker = load_clip(grid, settings=replace(load_pretrained(BUILTIN_DIR / "face").processor.config, num_frames=75),
                        modalities=("frames",)).frames
    speaker = around_face(speaker, 90)
    still = load_clip(crema, modalities=("frames",)).frames[8]
    listener = around_face(np.repeat(still[None], len(speaker), 0), 144)
    frames = side_by_side(speaker, listener)
    path = write_clip(tmp_path_factory.mktemp("faces") / "two.mp4", duration_s=len(frames) / FPS, fps=FPS,
                      width=frames.shape[2], height=frames.shape[1], frame_fn=lambda i, t: frames[i])
    return path, speaker.shape[2]


def record_of(model, path) -> tuple[dict, dict]:
    """The face expert's item and record for the whole clip, through its processor as analyze runs it."""
    item = model.processor(Utterance(text="", emotion=None, sentiment=None, path=path, source=str(path)))
    batch = model.processor.collate([item])
    features = model.encode(batch)
    (record,) = Recorder.of(model, "face")(model(**features), [str(path)], features)
    return item, record


def test_two_faces_are_counted_and_the_speaking_one_is_read(face_expert, two_faces):
    path, split = two_faces
    item, record = record_of(face_expert, path)
    assert record["faces_in_frame"] == 2 and record["face_choice"] == SPEAKING_FACE
    assert item["face_mask"].sum() >= 12  # the speaker's face in most of the 16 frames
    frames = load_clip(path, modalities=("frames",), settings=face_expert.processor.config).frames
    detected = detect_faces(frames, face_expert.processor.config.face_detect_size)
    centres = [(f.box[0] + f.box[2]) / 2 for f in pick_faces(frames, detected).faces if f is not None]
    assert centres and all(c < split for c in centres)  # every face read is the speaker's, the smaller one
    largest = [max(d, key=lambda f: f.area) for d in detected if d]
    assert all((f.box[0] + f.box[2]) / 2 > split for f in largest)  # what the rule before read: the listener


def test_with_no_mouth_moving_the_largest_face_is_read():
    """Two still real faces (the same GRID frame beside a larger still CREMA-D face): no mouth moves,
    so the rule cannot tell and falls back to the largest."""
    grid = load_clip(shared_data("video", "grid", "bbaf2n.mpg"), modalities=("frames",)).frames
    crema = load_clip(shared_data("video", "crema-d", "1001_DFA_NEU_XX.flv"), modalities=("frames",)).frames
    frames = side_by_side(around_face(np.repeat(grid[:1], 16, 0), 90), around_face(np.repeat(crema[8:9], 16, 0), 144))
    pick = pick_faces(frames, detect_faces(frames, 320))
    assert (pick.count, pick.choice) == (2, LARGEST)
    assert all(f is not None and f.box[0] > frames.shape[2] / 3 for f in pick.faces)


@pytest.mark.parametrize("clip", [("grid", "bbaf2n.mpg"), ("crema-d", "1001_DFA_ANG_XX.flv")])
def test_one_face_is_counted_as_the_only_face(face_expert, clip):
    _, record = record_of(face_expert, shared_data("video", *clip))
    assert record["faces_in_frame"] == 1 and record["face_choice"] == ONLY_FACE and record["face_frames"] == 1.0


def test_an_animation_without_a_face_counts_none_and_the_face_expert_abstains(face_expert):
    path = shared_data("video", "faces-edge", "pyfeat_no_face.mp4")
    item = face_expert.processor(Utterance(text="", emotion=None, sentiment=None, path=path, source=str(path)))
    batch = face_expert.processor.collate([item])
    features = face_expert.encode(batch)
    out = face_expert(**features)
    assert not out.present.any()  # abstains
    (record,) = Recorder.of(face_expert, "face")(out, [str(path)], features)
    assert (record["faces_in_frame"], record["face_choice"], record["face_frames"]) == (0, None, 0.0)


def test_the_choice_codes_round_trip_through_a_batch():
    from emosent.data.face_tracks import NO_CHOICE
    from emosent.model import EmotionSentimentOutput

    out = EmotionSentimentOutput(torch.zeros(4, 7), torch.zeros(4, 3))
    features = {"video_features": torch.tensor([[0.0], [1.0], [0.5], [1.0]]), "faces_in_frame": torch.tensor([0, 1, 3, 2]),
                "face_choice": torch.tensor([NO_CHOICE, *(FACE_CHOICES.index(c) for c in (ONLY_FACE, LARGEST, SPEAKING_FACE))])}
    records = Recorder("m", faces=True)(out, list("abcd"), features)
    assert [(r["faces_in_frame"], r["face_choice"]) for r in records] == [(0, None), (1, ONLY_FACE), (3, LARGEST), (2, SPEAKING_FACE)]
    assert Recorder("m", faces=True).blank().keys() == records[0].keys()

"""One model abstraction (emosent.pretrained): every command takes every model, the built-in one
by default; `fuse` and `train --from` fit a fusion; every model gives one JSON shape whatever
stream a file lacks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, shared_data, tone
from emosent.builtin import load_model
from emosent.fusion import LateFusionModel
from emosent.model import EmotionSentimentOutput
from emosent.pretrained import load_pretrained
from emosent.synthetic import write_clip


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    """The 12 real CREMA-D clips of ../shared/data/video/crema-d (6 FLV videos, 6 MP3 recordings)
    as a labelled test split."""
    folder = shared_data("video", "crema-d")
    out = tmp_path_factory.mktemp("crema")
    with open(folder / "labels.csv", newline="") as f, open(out / "test.csv", "w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["path", "text", "emotion", "sentiment"])
        for row in csv.DictReader(f):
            writer.writerow([folder / row["path"], row["text"], row["emotion"], row["sentiment"]])
    return out


def test_evaluate_scores_the_built_in_model_and_each_expert_on_real_clips(crema, tmp_path):
    result = run_cli("evaluate", "--data", crema, "--split", "test", "--out", tmp_path / "eval", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "builtin" and metrics["examples"] == 12
    experts = metrics["experts"]
    # the text and voice experts answer on every clip; the face expert only on the 6 videos (the MP3s have no frames)
    assert {name: e["examples"] for name, e in experts.items()} == {"text": 12, "audio": 12, "face": 6}
    for name in experts:
        assert 0 <= experts[name]["emotion"]["accuracy"] <= 1
        assert sum(map(sum, experts[name]["emotion"]["confusion_matrix"])) == experts[name]["examples"]
    assert "emotion (face, 6)" in result.stdout


def test_export_copies_the_built_in_model_into_a_folder_that_loads_and_answers_alike(tmp_path):
    result = run_cli("export", "--out", tmp_path / "copy")
    assert result.returncode == 0, result.stderr[-2000:]
    copy, builtin = load_pretrained(tmp_path / "copy"), load_model("builtin")
    assert isinstance(copy, LateFusionModel) and json.loads((tmp_path / "copy" / "config.json").read_text())["model_type"] == "late_fusion"
    batch = builtin.processor.collate([{"index": 0, "text": "I can't believe you did that!"}])
    with torch.no_grad():
        a, b = builtin.experts["text"](**{k: batch[k] for k in ("input_ids", "attention_mask")}), \
            copy.experts["text"](**{k: batch[k] for k in ("input_ids", "attention_mask")})
    torch.testing.assert_close(a.emotion_logits, b.emotion_logits)
    again = run_cli("export", "--out", tmp_path / "copy")
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr


def test_train_from_builtin_refits_the_heads_and_fusion_on_my_clips_then_analyze_uses_it(sample_dir, tmp_path):
    result = run_cli("train", "--from", "builtin", "--data", sample_dir, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "adapt.json").read_text())
    assert report["rows"] == 14 and set(report["dev"]) == {"before", "after"}
    assert report["heads_refitted"] == ["text", "audio"]  # the face network has no head to re-fit
    # the encoders are frozen: only the experts' output heads and the fusion's numbers change
    adapted, builtin = load_pretrained(tmp_path / "run" / "model"), load_model("builtin")
    changed = set()
    for name in builtin.experts:
        for (key, a), b in zip(adapted.experts[name].state_dict().items(), builtin.experts[name].state_dict().values()):
            if key.startswith(("emotion_head.", "sentiment_head.")):
                changed.add(name) if not torch.equal(a, b) else None
            else:
                assert torch.equal(a, b), (name, key)
    assert changed == {"text", "audio"}
    assert adapted.config.experts != builtin.config.experts or adapted.config.emotion_bias != builtin.config.emotion_bias
    # it fits the clips it was fitted on at least as well as the built-in model (the pull keeps it near)
    assert report["dev"]["after"]["emotion"]["accuracy"] >= report["dev"]["before"]["emotion"]["accuracy"] - 0.15
    clip = next((sample_dir / "output_repeated_splits_test").glob("*.mp4"))
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"start": 0.0, "end": 1.0, "text": "this is wonderful"}]))
    analysed = run_cli("analyze", clip, "--model", tmp_path / "run" / "model", "--transcript", transcript)
    assert analysed.returncode == 0, analysed.stderr[-2000:]
    assert json.loads(analysed.stdout)["utterances"][0]["experts"].keys() == {"text", "audio", "face"}


def test_train_from_a_model_without_a_fusion_says_so(tmp_path, sample_dir):
    from emosent import EmotionSentimentModel, ModelConfig

    EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",))).save_pretrained(tmp_path / "text")
    result = run_cli("train", "--from", tmp_path / "text", "--data", sample_dir, "--out", tmp_path / "run")
    assert result.returncode == 2 and "a multimodal model has no fusion to re-fit" in result.stderr


def test_fit_fusion_weighs_an_informative_expert_above_a_noisy_one():
    from emosent.fit import fit_fusion

    torch.manual_seed(0)
    n = 400
    labels = {"emotion": torch.randint(0, 7, (n,)), "sentiment": torch.randint(0, 3, (n,))}
    good = (torch.nn.functional.one_hot(labels["emotion"], 7) * 3.0 + torch.randn(n, 7),
            torch.nn.functional.one_hot(labels["sentiment"], 3) * 3.0 + torch.randn(n, 3))
    noise = (torch.randn(n, 7) * 3, torch.randn(n, 3) * 3)
    model = load_model("builtin")
    present = torch.ones(n, dtype=torch.bool)
    outputs = {"text": (*noise, present), "audio": (*good, present), "face": (*noise, ~present)}
    config = fit_fusion(model, outputs, labels)
    assert config.experts["audio"].weight > 2 * config.experts["text"].weight
    fused = model.fuse({k: EmotionSentimentOutput(e, s, present=p) for k, (e, s, p) in outputs.items()}, config)
    assert (fused.emotion_logits.argmax(-1) == labels["emotion"]).float().mean() > 0.8


def test_fuse_joins_expert_folders_with_temperatures_fitted_on_their_own_data(sample_dir, tmp_path):
    result = run_cli("fuse", "--expert", "text=builtin:text", "--expert", "face=builtin:face", "--calibrate",
                     f"text={sample_dir}:dev", "--temperature", "face=2.5", "--out", tmp_path / "fused",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    model = load_pretrained(tmp_path / "fused")
    assert model.modalities == ("text", "video") and model.config.experts["face"].temperature == 2.5
    assert model.config.experts["text"].temperature != 1.0  # fitted
    bad = run_cli("fuse", "--expert", "text", "--out", tmp_path / "other")
    assert bad.returncode == 2 and "--expert 'text': expected NAME=VALUE" in bad.stderr


def test_a_missing_face_video_stream_or_audio_stream_give_one_json_shape(tmp_path):
    """The built-in model on a clip with a face and sound, one without a face, one without a video
    stream, one without an audio stream and one whose audio is silence: the same keys per utterance, every expert present (null where it
    abstained), and the reason once in warnings."""
    from skimage.data import astronaut

    from emosent.analyze import analyze

    face = np.asarray(Image.fromarray(astronaut()).resize((240, 240)))
    frame = np.full((240, 320, 3), 40, np.uint8)
    frame[:, 40:280] = face
    grey = np.full((240, 320, 3), 128, np.uint8)
    files = {
        "all": write_clip(tmp_path / "all.mp4", duration_s=1.0, fps=10, frame_fn=lambda i, t: frame, audio_fn=tone()),
        "no face": write_clip(tmp_path / "grey.mp4", duration_s=1.0, fps=10, frame_fn=lambda i, t: grey, audio_fn=tone()),
        "no video": write_clip(tmp_path / "voice.m4a", duration_s=1.0, audio_fn=tone()),
        "no audio": write_clip(tmp_path / "silent.mp4", duration_s=1.0, fps=10, frame_fn=lambda i, t: frame),
        "silence": write_clip(tmp_path / "muted.mp4", duration_s=1.0, fps=10, frame_fn=lambda i, t: frame,
                              audio_fn=lambda t: np.zeros_like(t, dtype=np.float32)),
    }
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"start": 0.0, "end": 1.0, "text": "well, here we are"}]))
    model = load_model("builtin")
    results = {name: analyze(path, model, transcript=transcript) for name, path in files.items()}
    shapes = {name: (sorted(r["utterances"][0]), sorted(r["utterances"][0]["experts"])) for name, r in results.items()}
    assert len(set(map(str, shapes.values()))) == 1, shapes
    abstained = {name: sorted(k for k, v in r["utterances"][0]["experts"].items() if v is None) for name, r in results.items()}
    assert abstained == {"all": [], "no face": ["face"], "no video": ["face"], "no audio": ["audio"], "silence": ["audio"]}
    assert results["no video"]["warnings"] == [f"{files['no video']}: no video stream: the face expert abstains"]
    assert results["no audio"]["warnings"] == [f"{files['no audio']}: no audio stream: the audio expert abstains",
                                               f"{files['no audio']}: no audio stream, so speakers cannot be told apart by voice"]
    assert results["no face"]["warnings"] == [f"{files['no face']}: no face seen in 1 of 1 utterances: the face expert abstains there"]
    assert results["silence"]["warnings"] == [
        f"{files['silence']}: 1 of 1 segments hold too little sound to tell who speaks: their speaker is left empty",
        f"{files['silence']}: silence in 1 of 1 utterances: the audio expert abstains there"]
    assert results["all"]["warnings"] == []

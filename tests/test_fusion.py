"""Late fusion (emosent.fusion): the mean and product of calibrated experts, abstention from the
processor's masks, the face expert's label order, folders that round-trip (and the old fusion.json
folders that still load), checked configs, and analyze on a fused model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tone
from emosent import EMOTIONS, SENTIMENTS, EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze
from emosent.fer_network import FER_CLASSES, FER_TO_EMOSENT
from emosent.fusion import FER_ORDER, ExpertSpec, FaceExpressionModel, FusionConfig, LateFusionModel
from emosent.pretrained import load_pretrained
from emosent.encoders.video import FACE_PENULTIMATE
from emosent.synthetic import write_clip

# P(sentiment | emotion): joy positive, neutral neutral, the rest negative (a hand-made table)
TABLE = [[1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]


def fused_model(weights=(1.0, 1.0, 1.0), temperatures=(1.0, 1.0, 1.0), rule: str = "mean") -> LateFusionModel:
    torch.manual_seed(0)
    text = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",), finetune_text_layers=1, pooling="mean"))
    audio = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("audio",)))
    specs = {name: ExpertSpec(name, w, t) for name, w, t in zip(("text", "audio", "face"), weights, temperatures)}
    experts = {"text": text, "audio": audio, "face": FaceExpressionModel(TABLE)}
    return LateFusionModel(experts, FusionConfig(specs, rule)).eval()


@pytest.fixture(scope="module")
def smiling_clip(tmp_path_factory):
    """2 s of a real smiling face (scikit-image's astronaut, public domain) with a tone."""
    from skimage.data import astronaut

    face = np.asarray(Image.fromarray(astronaut()).resize((240, 240)))
    frame = np.full((240, 320, 3), 40, np.uint8)
    frame[:, 40:280] = face
    return write_clip(tmp_path_factory.mktemp("fusion") / "smile.mp4", duration_s=2.0, fps=25, width=320, height=240,
                      frame_fn=lambda i, t: frame, audio_fn=tone())


def test_the_face_experts_labels_are_reordered_to_ours():
    assert [FER_TO_EMOSENT[FER_CLASSES[i]] for i in FER_ORDER] == list(EMOTIONS)


def features(b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, FACE_PENULTIMATE + 7 + 1, generator=g)
    video[:, -1] = torch.tensor([1.0, 0.0, 0.5])[:b]  # the second row has no face
    return {"text_features": torch.randn(b, 5, 32, generator=g), "attention_mask": torch.ones(b, 5, dtype=torch.long),
            "video_features": video, "audio_features": torch.randn(b, 128, generator=g),
            "audio_lengths": torch.tensor([300, 300, 0])[:b],
            "audio_present": torch.tensor([True, True, False])[:b]}  # the third row has no audio stream


def calibrated_parts(model: LateFusionModel, x: dict) -> list:
    """(weight, calibrated emotion log-probs, present) per expert, computed here by hand for
    weights (1, 0.5, 2) and temperatures (1.5, 1, 0.7)."""
    with torch.no_grad():
        text = model.experts["text"](text_features=x["text_features"], attention_mask=x["attention_mask"])
        audio = model.experts["audio"](audio_features=x["audio_features"])
    fer = x["video_features"][:, FACE_PENULTIMATE:FACE_PENULTIMATE + 7][:, FER_ORDER]
    return [(1.0, (text.emotion_logits / 1.5).log_softmax(-1), torch.tensor([1.0, 1, 1])),
            (0.5, audio.emotion_logits.log_softmax(-1), torch.tensor([1.0, 1, 0])),
            (2.0, (fer / 0.7).log_softmax(-1), torch.tensor([1.0, 0, 1]))]


def test_fused_log_probs_are_the_weighted_product_of_the_present_experts():
    model = fused_model(weights=(1.0, 0.5, 2.0), temperatures=(1.5, 1.0, 0.7), rule="product")
    x = features()
    with torch.no_grad():
        out = model(**x)
    expected = sum(w * lp * present[:, None] for w, lp, present in calibrated_parts(model, x)).log_softmax(-1)
    torch.testing.assert_close(out.emotion_logits, expected)
    assert torch.allclose(out.emotion_logits.exp().sum(-1), torch.ones(3))
    assert out.experts["face"][2].tolist() == [True, False, True] and out.experts["audio"][2].tolist() == [True, True, False]


def test_fused_probs_are_the_weighted_mean_of_the_present_experts():
    model = fused_model(weights=(1.0, 0.5, 2.0), temperatures=(1.5, 1.0, 0.7), rule="mean")
    x = features()
    with torch.no_grad():
        out = model(**x)
    parts = calibrated_parts(model, x)
    total = sum(w * present[:, None] for w, _, present in parts)  # (B, 1)
    expected = sum(w * lp.exp() * present[:, None] for w, lp, present in parts) / total
    torch.testing.assert_close(out.emotion_logits.exp(), expected)
    # an expert sure of a class the others rule out does not veto them, as it does in a product
    x["video_features"][:, FACE_PENULTIMATE:FACE_PENULTIMATE + 7] = -30.0
    x["video_features"][0, FACE_PENULTIMATE + FER_CLASSES.index("happy")] = 30.0
    with torch.no_grad():
        mean, product = model(**x), fused_model((1.0, 0.5, 2.0), (1.5, 1.0, 0.7), "product")(**x)
    assert mean.emotion_logits.exp()[0].max() < 0.9 and product.emotion_logits.exp()[0, EMOTIONS.index("joy")] > 0.999


@pytest.mark.parametrize("field, value, message", [
    ("rule", "vote", r"fusion.rule must be one of \('mean', 'product'\), got 'vote'"),
    ("temperature", 0, r"fusion.experts.text.temperature must be a finite number > 0, got 0"),
    ("temperature", -1.5, r"fusion.experts.text.temperature must be a finite number > 0, got -1.5"),
    ("temperature", "2", r"fusion.experts.text.temperature must be a finite number > 0, got '2'"),
    ("weight", -1.0, r"fusion.experts.text.weight must be a finite number >= 0, got -1.0"),
    ("weight", 1e999, r"fusion.experts.text.weight must be a finite number >= 0, got inf"),
    ("folder", None, r"fusion.experts.text.folder must name a subfolder of the model folder"),
    ("folder", "../elsewhere", r"fusion.experts.text.folder must name a subfolder of the model folder"),
    ("emotion_bias", [0.0] * 3, r"fusion.emotion_bias must be a list of 7 numbers"),
])
def test_a_bad_fusion_config_is_one_line_naming_the_file_and_field(tmp_path, field, value, message):
    folder = fused_model().save_pretrained(tmp_path / "fused")
    meta = json.loads((folder / "config.json").read_text())
    if field in ("rule", "emotion_bias"):
        meta["fusion"][field] = value
    else:
        meta["fusion"]["experts"]["text"][field] = value
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json: " + message):
        load_pretrained(folder)


def test_all_weights_zero_and_a_bad_sentiment_table_are_refused(tmp_path):
    folder = fused_model().save_pretrained(tmp_path / "fused")
    meta = json.loads((folder / "config.json").read_text())
    for spec in meta["fusion"]["experts"].values():
        spec["weight"] = 0.0
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="at least one weight must be > 0"):
        load_pretrained(folder)
    face = json.loads((folder / "face" / "config.json").read_text())
    face["sentiment_given_emotion"] = [[1.0, 0.0, 0.0]] * 6
    (folder / "face" / "config.json").write_text(json.dumps(face))
    with pytest.raises(ValueError, match=r"face/config.json: sentiment_given_emotion must be 7 rows"):
        load_pretrained(folder / "face")


def test_the_face_experts_sentiment_follows_its_emotions():
    model = fused_model()
    x = features()
    x["video_features"][:, FACE_PENULTIMATE:FACE_PENULTIMATE + 7] = -20.0
    x["video_features"][:, FACE_PENULTIMATE + FER_CLASSES.index("happy")] = 20.0  # certain joy
    with torch.no_grad():
        _, sentiment, _ = model(**x).experts["face"]
    assert sentiment.exp()[:, SENTIMENTS.index("positive")].min() > 0.99


def test_a_fusion_folder_round_trips(tmp_path, smiling_clip):
    model = fused_model(weights=(1.0, 0.5, 1.0), temperatures=(1.2, 0.9, 1.1))
    model.config.card = {"summary": "a test"}
    folder = model.save_pretrained(tmp_path / "fused")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model_type"] == "late_fusion" and meta["fusion"]["rule"] == "mean"
    assert meta["fusion"]["experts"]["audio"] == {"weight": 0.5, "temperature": 0.9, "folder": "audio"}
    assert json.loads((folder / "face" / "config.json").read_text())["model_type"] == "face_expression"
    loaded = load_pretrained(folder)
    assert isinstance(loaded, LateFusionModel) and loaded.config.card == {"summary": "a test"}
    with torch.no_grad():
        a, b = model(**features()), loaded(**features())
    torch.testing.assert_close(a.emotion_logits, b.emotion_logits)
    torch.testing.assert_close(a.sentiment_logits, b.sentiment_logits)


def test_an_expert_folder_that_is_missing_is_refused(tmp_path):
    folder = fused_model().save_pretrained(tmp_path / "fused")
    meta = json.loads((folder / "config.json").read_text())
    meta["fusion"]["experts"]["smell"] = {"weight": 1.0, "temperature": 1.0, "folder": "smell"}
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="smell: no such model folder"):
        load_pretrained(folder)


def test_an_old_fusion_json_folder_still_loads_and_gives_the_same_answers(tmp_path):
    """emosent 0.1's layout: fusion.json, text/ and audio/ model folders, the face expert inline."""
    model = fused_model(weights=(1.0, 0.5, 1.0), temperatures=(1.2, 0.9, 1.1))
    old = tmp_path / "old"
    for name in ("text", "audio"):
        model.experts[name].save_pretrained(old / name)
    (old / "fusion.json").write_text(json.dumps({
        "format": 1, "rule": "mean", "sentiment_given_emotion": TABLE, "card": {},
        "experts": {"text": {"weight": 1.0, "temperature": 1.2, "folder": "text"},
                    "audio": {"weight": 0.5, "temperature": 0.9, "folder": "audio"},
                    "face": {"weight": 1.0, "temperature": 1.1, "folder": None}},
        "face_source": json.loads(json.dumps(model.experts["face"].save_pretrained(tmp_path / "f") and
                                             json.loads((tmp_path / "f" / "config.json").read_text())["face"]["networks"][0]))}))
    loaded = load_pretrained(old)
    with torch.no_grad():
        torch.testing.assert_close(model(**features()).emotion_logits, loaded(**features()).emotion_logits)


def test_analyze_with_a_fused_model_reports_each_expert(tmp_path, smiling_clip):
    folder = fused_model().save_pretrained(tmp_path / "fused")
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"start": 0.0, "end": 1.0, "text": "hello there"},
                                      {"start": 1.0, "end": 2.0, "text": "what a day it has been for all of us"}]))
    result = analyze(smiling_clip, folder, transcript=transcript, batch_size=2)
    assert [u["text"] for u in result["utterances"]] == ["hello there", "what a day it has been for all of us"]
    for u in result["utterances"]:
        assert set(u["experts"]) == {"text", "audio", "face"} and u["face_frames"] == 1.0
        assert (u["faces_in_frame"], u["face_choice"]) == (1, "only face")
        assert u["experts"]["face"]["emotion"]["label"] == "joy"  # a real smile, read by the FER2013 network
        assert u["source"] == "transcript"
    # one batch of two texts of different lengths gives what one at a time gives: the padded
    # positions are masked in the fine-tuned text layers
    alone = analyze(smiling_clip, folder, transcript=transcript, batch_size=1)
    for u, v in zip(result["utterances"], alone["utterances"]):
        assert u["emotions"][0]["label"] == v["emotions"][0]["label"]
        assert u["emotions"][0]["confidence"] == pytest.approx(v["emotions"][0]["confidence"], abs=1e-3)


def test_an_audio_file_is_analysed_with_the_face_expert_abstaining(tmp_path):
    voice = write_clip(tmp_path / "voice.m4a", duration_s=1.0, audio_fn=tone())
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"start": 0.0, "end": 1.0, "text": "hello there"}]))
    model = fused_model()
    model.name_or_path = "my-fusion"
    result = analyze(voice, model, transcript=transcript)
    assert result["model"] == "my-fusion"
    assert [w for w in result["warnings"] if "abstains" in w] == [f"{voice}: no video stream: the face expert abstains"]
    u = result["utterances"][0]  # the same shape as for a video: every expert, null where it abstained
    assert set(u["experts"]) == {"text", "audio", "face"} and u["experts"]["face"] is None and u["face_frames"] == 0.0
    assert (u["faces_in_frame"], u["face_choice"]) == (0, None)
    assert u["experts"]["audio"] is not None


def test_predict_runs_a_fused_model_on_raw_inputs(tmp_path, smiling_clip):
    from emosent.predict import predict, read_predictions

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "smile.mp4").write_bytes(smiling_clip.read_bytes())
    (folder / "smile.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello there\n\n2\n00:00:01,000 --> 00:00:02,000\nbye now\n")
    model = fused_model()
    predict(folder, tmp_path / "out.jsonl", model, num_workers=0, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    rows = read_predictions(tmp_path / "out.jsonl")
    result = analyze(folder / "smile.mp4", model)  # the same segments from the same subtitles
    assert [r["text"] for r in rows] == [u["text"] for u in result["utterances"]] == ["hello there", "bye now"]
    for r, u in zip(rows, result["utterances"]):
        assert r["emotion"] == u["emotions"][0]["label"]
        assert (r["faces_in_frame"], r["face_choice"]) == (u["faces_in_frame"], u["face_choice"]) == (1, "only face")
        assert max(r["emotion_probs"].values()) == pytest.approx(u["emotions"][0]["confidence"], abs=1e-3)

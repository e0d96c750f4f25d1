"""One utterance record (emosent.records) for analyze, predict and evaluate: its fields, each
expert's part (null where it abstained or was left out), and NaN/inf refused with the model's name."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_cli
from emosent import EmotionSentimentModel, ModelConfig
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.model import EmotionSentimentOutput
from emosent.records import Recorder


def output(b: int = 2, experts: dict | None = None, seed: int = 0) -> EmotionSentimentOutput:
    g = torch.Generator().manual_seed(seed)
    return EmotionSentimentOutput(torch.randn(b, 7, generator=g), torch.randn(b, 3, generator=g), experts)


def expert(b: int, present: list[bool], seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 7, generator=g).log_softmax(-1), torch.randn(b, 3, generator=g).log_softmax(-1), torch.tensor(present))


def test_a_record_holds_the_top_labels_the_top_3_and_every_probability():
    out = output()
    (record, _) = Recorder("m")(out, ["a", "b"])
    assert set(record) == {"emotion", "sentiment", "emotions", "sentiments", "emotion_probs", "sentiment_probs"}
    probs = out.emotion_logits[0].softmax(-1)
    assert list(record["emotion_probs"]) == list(EMOTIONS) and list(record["sentiment_probs"]) == list(SENTIMENTS)
    assert list(record["emotion_probs"].values()) == pytest.approx(probs.tolist(), abs=1e-6)
    assert record["emotion"] == EMOTIONS[int(probs.argmax())] == record["emotions"][0]["label"]
    assert [t["confidence"] for t in record["emotions"]] == pytest.approx(probs.sort(descending=True).values[:3].tolist(), abs=1e-4)
    assert len(record["sentiments"]) == 3 and record["sentiment"] == record["sentiments"][0]["label"]
    assert Recorder("m").blank() == dict.fromkeys(record)  # a skipped row has the same fields, all null
    json.dumps(record, allow_nan=False)


def test_every_expert_of_the_model_has_an_entry_null_where_it_abstained():
    experts = {"text": expert(2, [True, True], 1), "audio": expert(2, [True, False], 2)}  # no "face": left out
    recorder = Recorder("fusion", ("text", "audio", "face"), faces=True)
    video = torch.zeros(2, 513)
    video[:, -1] = torch.tensor([0.75, 0.0])
    first, second = recorder(output(2, experts), ["a", "b"], {"video_features": video})
    assert set(first["experts"]) == {"text", "audio", "face"} and first["experts"]["face"] is None
    assert second["experts"]["audio"] is None and second["experts"]["text"] is not None
    text = first["experts"]["text"]
    probs = experts["text"][0][0].exp()
    assert text["emotion"] == {"label": EMOTIONS[int(probs.argmax())], "confidence": round(float(probs.max()), 4)}
    assert list(text["emotion_probs"].values()) == pytest.approx(probs.tolist(), abs=1e-6)
    assert set(text["sentiment_probs"]) == set(SENTIMENTS) and text["sentiment"]["label"] in SENTIMENTS
    assert (first["face_frames"], second["face_frames"]) == (0.75, 0.0)
    (no_video,) = recorder(output(1, {}), ["c"])  # a file without video: no face seen, the face expert left out
    assert no_video["face_frames"] is None and no_video["experts"] == {"text": None, "audio": None, "face": None}
    assert set(recorder.blank()) == set(first)


@pytest.mark.parametrize("where", ["fused", "expert", "face"])
def test_nan_or_inf_is_refused_with_the_models_name(where):
    out = output(2, {"text": expert(2, [True, True], 1)})
    features = {"video_features": torch.ones(2, 513)}
    if where == "fused":
        out.emotion_logits[1, 3] = math.nan
    elif where == "expert":
        out.experts["text"][1][1, 0] = math.inf
    else:
        features["video_features"][1, -1] = math.nan
    with pytest.raises(ValueError, match=r"model my-model produced NaN/inf for clip\.mp4 row 2 "):
        Recorder("my-model", ("text",), faces=True)(out, ["clip.mp4 row 1", "clip.mp4 row 2"], features)


def test_an_abstaining_experts_nan_is_not_written_so_not_refused():
    text = expert(1, [False], 1)
    text[0][0, 0] = math.nan
    (record,) = Recorder("m", ("text",))(output(1, {"text": text}), ["a"])
    assert record["experts"] == {"text": None}


def test_evaluate_writes_each_examples_record_beside_the_metrics(sample_dir, tmp_path):
    torch.manual_seed(0)
    model_dir = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",))).save_pretrained(tmp_path / "model")
    result = run_cli("evaluate", "--model", model_dir, "--data", sample_dir, "--split", "dev", "--out", tmp_path / "eval",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["examples"] > 0
    accuracy = sum(r["emotion"] == r["label_emotion"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["emotion"]["accuracy"], abs=1e-6)  # the rows are what was scored
    assert {"file", "source", "text", "emotions", "emotion_probs", "skip"} <= set(rows[0]) and rows[0]["skip"] is None


def test_evaluate_refuses_a_model_that_outputs_nan(sample_dir, tmp_path):
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",)))
    with torch.no_grad():  # finite weights whose outputs overflow: caught when the outputs are written
        model.emotion_head[-1].weight.fill_(3e38)
    model_dir = model.save_pretrained(tmp_path / "model")
    result = run_cli("evaluate", "--model", model_dir, "--data", sample_dir, "--split", "dev", "--out", tmp_path / "eval",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 2 and f"model {model_dir} produced NaN/inf for " in result.stderr, result.stderr[-3000:]
    with torch.no_grad():  # NaN in the weights themselves: refused on load, naming the file and the tensor
        model.emotion_head[-1].bias.fill_(math.nan)
    model.save_pretrained(tmp_path / "model")
    result = run_cli("evaluate", "--model", model_dir, "--data", sample_dir, "--split", "dev", "--out", tmp_path / "eval")
    assert result.returncode == 2 and "model.safetensors: tensor emotion_head.3.bias holds NaN" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "eval" / "predictions.jsonl").exists() and not (tmp_path / "eval" / "metrics.json").exists()

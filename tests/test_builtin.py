"""The built-in model, out of the box: `emosent analyze VIDEO` with nothing else, offline, on real
speech (espeak-ng), through speech recognition and the packaged late-fusion model."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, spoken_clip
from emosent.builtin import BUILTIN_DIR, load_model
from emosent.fusion import LateFusionModel

# Clearly worded lines, each with the sentiment any reader gives it.
LINES = ("I am so happy, this is wonderful news!", "I hate you, get out!")
SENTIMENTS = ("positive", "negative")
KEY_WORDS = (("happy", "wonderful", "news"), ("hate", "get", "out"))


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    return spoken_clip(tmp_path_factory.mktemp("builtin"), LINES, 0.6, 1.2, 0.6)


def test_the_built_in_model_is_packaged_and_loads():
    model = load_model(None)
    assert isinstance(model, LateFusionModel) and set(model.config.experts) == set(model.experts) == {"text", "audio", "face"}
    assert (BUILTIN_DIR / "MODEL_CARD.md").is_file()
    listing = run_cli("analyze", "--list-models")
    assert listing.returncode == 0 and listing.stdout.startswith("builtin (default):"), listing.stderr
    assert "non-commercial" in listing.stdout


def test_analyze_with_nothing_else_hears_the_words_and_their_sentiment(spoken, tmp_path):
    clip, duration, spans = spoken
    out = tmp_path / "result.json"
    result = run_cli("analyze", clip, "--out", out)  # offline: conftest sets HF_HUB_OFFLINE for the child too
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["model"] == "builtin" and data["segments_from"] == {"source": "asr", "asr_model": "base"}
    assert data["language"]["code"] == "en" and data["language"]["how"] == "detected", data["language"]
    utterances = data["utterances"]
    assert len(utterances) == len(LINES), [u["text"] for u in utterances]
    for u, words, (voice_start, voice_end), sentiment in zip(utterances, KEY_WORDS, spans, SENTIMENTS):
        text = u["text"].lower()
        positions = [text.find(w) for w in words]
        assert -1 not in positions and positions == sorted(positions), (u["text"], words)  # the words, in order
        assert 0 <= u["start_time"] < u["end_time"] <= duration and u["source"] == "asr"
        assert voice_start - 0.6 <= u["start_time"] and u["end_time"] <= voice_end + 0.3, (u, voice_start, voice_end)
        assert u["sentiments"][0]["label"] == sentiment, u
        assert u["experts"]["face"] is None  # grey frames: no face, so the face expert abstains
        assert u["experts"]["text"] is not None  # English: the text expert reads it


def test_predict_reads_a_call_recording_as_analyze_does(tmp_path):
    """A folder holding an audio-only recording (a call) with its subtitles: `predict` with the
    built-in model gives its utterances, the face expert abstaining, with analyze's numbers."""
    import shutil

    from conftest import speak
    from emosent.analyze import analyze
    from emosent.labels import EMOTIONS, SENTIMENTS
    from emosent.predict import predict, read_predictions

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does it)")
    calls = tmp_path / "calls"
    calls.mkdir()
    samples, rate = speak(LINES[1], calls / "call.wav")
    end = len(samples) / rate
    (calls / "call.srt").write_text(f"1\n00:00:00,000 --> 00:00:{end:06.3f}\n{LINES[1]}\n".replace(".", ",", 1))
    model = load_model(None)
    predict(calls, tmp_path / "out.jsonl", model, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    (row,) = read_predictions(tmp_path / "out.jsonl")
    assert row["skip"] is None and row["file"].endswith("call.wav") and row["sentiment"] == "negative", row
    (utterance,) = analyze(calls / "call.wav", model)["utterances"]  # the face expert abstains in both
    for task, labels in (("emotions", EMOTIONS), ("sentiments", SENTIMENTS)):
        for top in utterance[task]:
            assert top["label"] in labels
            assert abs(row[f"{task[:-1]}_probs"][top["label"]] - top["confidence"]) < 2e-4, (task, top, row)
    # one record: every expert of the built-in model, the face null (no video: it abstains, or analyze leaves it out)
    assert row["experts"]["face"] is None and utterance["experts"]["face"] is None and row["face_frames"] == 0.0
    for name in ("text", "audio"):
        mine, theirs = row["experts"][name], utterance["experts"][name]
        assert mine["emotion"]["label"] == theirs["emotion"]["label"] and mine["sentiment"]["label"] == theirs["sentiment"]["label"]
        assert max(abs(mine["emotion_probs"][k] - theirs["emotion_probs"][k]) for k in EMOTIONS) < 2e-4

"""emosent analyze: per-utterance results from subtitles or transcripts, and its bad inputs."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import run_cli, solid_frames, tone
from emosent import EMOTIONS, SENTIMENTS, EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze

SRT = """1
00:00:00,000 --> 00:00:00,900
I am so furious about this

2
00:00:01,000 --> 00:00:01,800
What a wonderful surprise

3
00:00:01,700 --> 00:00:03,500
Well, that is that
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none"))
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def clip(sample_dir):
    return sorted((sample_dir / "output_repeated_splits_test").glob("*.mp4"))[0]


def check_utterance(u: dict) -> None:
    for key, labels in (("emotions", EMOTIONS), ("sentiments", SENTIMENTS)):
        top = u[key]
        assert len(top) == 3 and all(t["label"] in labels for t in top)
        confidences = [t["confidence"] for t in top]
        assert all(0 <= c <= 1 for c in confidences) and confidences == sorted(confidences, reverse=True)
        probs = u[f"{key[:-1]}_probs"]  # the whole distribution, in label order, as predict writes it
        assert list(probs) == list(labels) and sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert u[key[:-1]] == top[0]["label"] and probs[top[0]["label"]] == pytest.approx(top[0]["confidence"], abs=1e-4)


def test_cli_on_a_sample_clip_with_an_srt(model_dir, clip, tmp_path):
    subtitles = tmp_path / "clip.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,600\nI am so furious\n\n2\n00:00:00,600 --> 00:00:01,000\nlovely\n")
    out, plot = tmp_path / "result.json", tmp_path / "timeline.png"
    result = run_cli("analyze", clip, "--model", model_dir, "--subtitles", subtitles, "--out", out, "--plot", plot)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"video", "model", "duration_s", "elapsed_s", "utterances"} <= set(data)
    assert [u["text"] for u in data["utterances"]] == ["I am so furious", "lovely"]
    assert [(u["start_time"], u["end_time"]) for u in data["utterances"]] == [(0.0, 0.6), (0.6, 1.0)]
    for u in data["utterances"]:
        check_utterance(u)
    assert plot.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.srt", "result.json", "timeline.png"]


def test_segments_outside_overlapping_and_empty(model_dir, clip, tmp_path):
    subtitles = tmp_path / "s.srt"
    subtitles.write_text(
        "1\n00:00:00,000 --> 00:00:00,800\nfirst\n\n"
        "2\n00:00:00,500 --> 00:00:00,900\noverlapping\n\n"
        "3\n00:00:00,900 --> 00:01:00,000\nruns past the end\n\n"
        "4\n00:02:00,000 --> 00:02:01,000\nANN: after the end\n\n"
        "5\n00:00:00,100 --> 00:00:00,200\n\u200b\n"
    )
    result = analyze(clip, model_dir, subtitles=subtitles)
    assert [u["text"] for u in result["utterances"]] == ["first", "overlapping", "runs past the end"]
    assert result["utterances"][2]["end_time"] == pytest.approx(result["duration_s"], abs=1e-3)
    # a skipped segment keeps the speaker its cue names
    assert [(s["text"], s["speaker"], s["reason"]) for s in result["skipped"]] == [
        ("", None, "empty text"), ("after the end", "ANN", "outside the video")]
    assert any("overlap" in w for w in result["warnings"]) and any("clipped" in w for w in result["warnings"])
    assert set(result["timing_s"]) == {"speakers", "decode", "text", "video", "audio", "heads"}


def test_webvtt_and_transcript_json(model_dir, clip, tmp_path):
    vtt = tmp_path / "s.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.250 --> 00:00:00.750\nhello there\n\n00:00:00.750 --> 00:00:01.000\nbye\n")
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"start": 0.25, "end": 0.75, "text": "hello there"}, {"start": 0.75, "end": 1.0, "text": "bye"}]))
    a = analyze(clip, model_dir, subtitles=vtt)
    b = analyze(clip, model_dir, transcript=transcript)
    assert [(u["start_time"], u["end_time"], u["text"]) for u in a["utterances"]] == [(0.25, 0.75, "hello there"), (0.75, 1.0, "bye")]
    assert {u.pop("source") for u in a["utterances"]} == {"subtitles"} and a["segments_from"]["file"] == str(vtt)
    assert {u.pop("source") for u in b["utterances"]} == {"transcript"}
    assert a["utterances"] == b["utterances"]  # same segments, same pipeline, same numbers


def test_subtitles_beside_the_video_are_used_when_none_are_given(model_dir, clip, tmp_path):
    video = tmp_path / "talk.mp4"
    video.write_bytes(clip.read_bytes())
    (tmp_path / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:00,500\nhello there\n")
    result = analyze(video, model_dir)
    assert result["segments_from"] == {"source": "subtitles", "file": str(tmp_path / "talk.srt")}
    assert [u["text"] for u in result["utterances"]] == ["hello there"]
    with pytest.raises(ValueError, match="at most one of --subtitles, --transcript or --asr"):
        analyze(video, model_dir, subtitles=tmp_path / "talk.srt", asr=True)


def test_the_same_numbers_as_the_training_pipeline(model_dir, clip, tmp_path):
    """A segment covering the whole clip gives the probabilities of the model on the training batch."""
    from emosent.data import Utterance
    from emosent.model import model_inputs

    model = EmotionSentimentModel.from_pretrained(model_dir)
    info = analyze(clip, model, transcript=write_json(tmp_path / "t.json", [{"start": 0, "end": 1000, "text": "so happy"}]))
    record = Utterance(text="so happy", emotion=None, sentiment=None, path=clip, start=0.0, end=info["duration_s"])
    batch = model.processor.collate([model.processor(record)])
    with torch.no_grad():
        probs = model(**model_inputs(batch)).emotion_logits.softmax(-1)[0]
    top = info["utterances"][0]["emotions"][0]
    assert top["confidence"] == pytest.approx(float(probs.max()), abs=1e-4) and top["label"] == EMOTIONS[int(probs.argmax())]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_wrong_format_or_encoding_of_subtitles(model_dir, clip, tmp_path):
    garbage = tmp_path / "bad.srt"
    garbage.write_text("this is not\na subtitle file\n")
    out = tmp_path / "out.json"
    result = run_cli("analyze", clip, "--model", model_dir, "--subtitles", garbage, "--out", out)
    assert result.returncode == 2 and "bad.srt: not a valid SRT file" in result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.srt"]  # nothing partial left

    binary = tmp_path / "bin.vtt"
    binary.write_bytes(b"\x00\x01\x02WEBVTT")
    result = run_cli("analyze", clip, "--model", model_dir, "--subtitles", binary)
    assert result.returncode == 2 and "binary data" in result.stderr

    legacy = tmp_path / "legacy.srt"
    legacy.write_bytes("1\n00:00:00,000 --> 00:00:00,500\nCafé déjà vu\n".encode("cp1252"))
    out = analyze(clip, model_dir, subtitles=legacy)
    assert out["utterances"][0]["text"] == "Café déjà vu" and any("Windows-1252" in w for w in out["warnings"])

    with pytest.raises(ValueError, match="unknown subtitle format '.txt'"):
        analyze(clip, model_dir, subtitles=write_json(tmp_path / "s.txt", []))


def test_video_without_audio_and_paths_that_are_not_videos(model_dir, tmp_path):
    from emosent.synthetic import write_clip

    silent = write_clip(tmp_path / "silent.mp4", duration_s=1.0, fps=25, width=160, height=120, frame_fn=solid_frames(160, 120))
    transcript = write_json(tmp_path / "t.json", [{"start": 0, "end": 1, "text": "hello"}])
    result = analyze(silent, model_dir, transcript=transcript)
    assert len(result["utterances"]) == 1 and any("no audio stream" in w for w in result["warnings"])

    text_file = tmp_path / "notes.mp4"
    text_file.write_text("not a video")
    out = tmp_path / "out.json"
    result = run_cli("analyze", text_file, "--model", model_dir, "--transcript", transcript, "--out", out)
    assert result.returncode == 2 and "notes.mp4: not a readable media file" in result.stderr and not out.exists()

    audio_only = write_clip(tmp_path / "voice.mp4", duration_s=1.0, audio_fn=tone())
    result = run_cli("analyze", audio_only, "--model", model_dir, "--transcript", transcript)
    assert result.returncode == 2 and "voice.mp4: no video stream" in result.stderr


def test_a_model_that_outputs_nan_is_refused_by_name(clip, tmp_path):
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",)))
    with torch.no_grad():
        model.emotion_head[-1].weight.fill_(3e38)  # finite weights (NaN ones are refused on load) whose outputs overflow
    model_dir = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out.json"
    transcript = write_json(tmp_path / "t.json", [{"start": 0.2, "end": 0.8, "text": "hello"}])
    result = run_cli("analyze", clip, "--model", model_dir, "--transcript", transcript, "--out", out)
    assert result.returncode == 2 and not out.exists(), result.stderr[-3000:]
    assert f"model {model_dir} produced NaN/inf for {clip}: segment 0.200-0.800 s" in result.stderr


def test_asr_without_faster_whisper_fails_at_once(model_dir, clip, tmp_path):
    # faster-whisper is a dependency, but an installation can lose it: a package of that name that
    # cannot be imported stands in for such a machine
    hidden = tmp_path / "hide" / "faster_whisper"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named faster_whisper')\n")
    path = os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")]))
    result = run_cli("analyze", clip, "--model", model_dir, "--asr", env={"PYTHONPATH": path})
    assert result.returncode == 2 and "pip install 'emosent[asr]'" in result.stderr


def test_with_context_each_segment_reads_the_ones_before_it(clip, tmp_path):
    """A context model analyses segment i with segments i-K..i-1 (and the transcript's speakers)
    as its dialogue, exactly as training reads a dialogue's earlier utterances."""
    from emosent.config import ProcessorConfig
    from emosent.data import Utterance
    from emosent.model import model_inputs

    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", modalities=("text",), pooling="mean"), ProcessorConfig(context=1)).eval()
    items = [{"start": 0.0, "end": 0.3, "text": "I won the lottery", "speaker": "Ann"},
             {"start": 0.3, "end": 0.6, "text": "no way", "speaker": "Bob"},
             {"start": 0.6, "end": 0.9, "text": "no way"}]
    result = analyze(clip, model, transcript=write_json(tmp_path / "t.json", items))
    third = Utterance(text="no way", emotion=None, sentiment=None, path=None, history=(("Bob", "no way"),))
    with torch.no_grad():
        probs = model(**model_inputs(model.processor.collate([model.processor(third)]))).emotion_logits.softmax(-1)[0]
    top = result["utterances"][2]["emotions"][0]
    assert top["confidence"] == pytest.approx(float(probs.max()), abs=1e-4) and top["label"] == EMOTIONS[int(probs.argmax())]
    # the same words after other words: another input, so (here) other numbers
    assert result["utterances"][1]["emotions"] != result["utterances"][2]["emotions"]


def test_an_analysis_that_keeps_no_segment_fails_in_one_line(model_dir, clip, tmp_path, capsys):
    from emosent.analyze import NothingAnalysedError
    from emosent.cli import main

    subtitles = tmp_path / "late.srt"
    subtitles.write_text("1\n00:02:00,000 --> 00:02:01,000\nafter the end\n\n2\n00:00:00,100 --> 00:00:00,200\n\u200b\n")
    with pytest.raises(NothingAnalysedError, match=r"0 of its 2 segments analysed: (outside the video \(1\), empty text \(1\)"
                                                   r"|empty text \(1\), outside the video \(1\))"):
        analyze(clip, model_dir, subtitles=subtitles)
    out = tmp_path / "result.json"
    code = main(["analyze", str(clip), "--model", str(model_dir), "--subtitles", str(subtitles), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    (line,) = [x for x in err.splitlines() if "error" in x]
    assert line.startswith("emosent analyze: error:") and "0 of its 2 segments analysed" in line and "--" not in line


def test_each_utterance_names_its_speaker_and_the_result_sums_them_up(model_dir, clip, tmp_path):
    items = [{"start": 0.0, "end": 0.3, "text": "I won the lottery", "speaker": "Ann"},
             {"start": 0.3, "end": 0.5, "text": "no way", "speaker": "Bob"},
             {"start": 0.5, "end": 0.8, "text": "it is true", "speaker": "Ann"},
             {"start": 0.8, "end": 0.9, "text": "hm"}]
    result = analyze(clip, model_dir, transcript=write_json(tmp_path / "t.json", items))
    assert [u["speaker"] for u in result["utterances"]] == ["Ann", "Bob", "Ann", None]
    ann, bob, unknown = result["speakers"]
    assert (ann["speaker"], bob["speaker"], unknown["speaker"]) == ("Ann", "Bob", None)
    assert (ann["utterances"], bob["utterances"], unknown["utterances"]) == (2, 1, 1)
    assert ann["spoken_s"] == pytest.approx(0.6, abs=1e-3) and bob["spoken_s"] == pytest.approx(0.2, abs=1e-3)
    mine = [u for u in result["utterances"] if u["speaker"] == "Ann"]
    for key, labels in (("emotions", EMOTIONS), ("sentiments", SENTIMENTS)):
        assert list(ann[key]) == list(labels) and sum(ann[key].values()) == pytest.approx(1, abs=2e-3)
        assert ann[key][mine[0][key[:-1]]] >= 0.5  # the share of her utterances with that top label
    scores = [u["sentiment_probs"]["positive"] - u["sentiment_probs"]["negative"] for u in mine]
    assert ann["sentiment_movement"]["change"] == pytest.approx(scores[1] - scores[0], abs=2e-3)
    assert bob["sentiment_movement"] is None
    # --plot draws this result in three lanes: Ann, Bob, and the utterance without a speaker
    from matplotlib.image import imread

    from emosent.plots import LANE_IN, LEGEND_IN, TITLE_IN, timeline_png
    assert imread(timeline_png(result, tmp_path / "t.png")).shape[0] == round(120 * (LEGEND_IN + TITLE_IN + 3 * LANE_IN))
    # subtitles name no speaker and voices are not told apart (--no-speakers): every utterance's is
    # null, and one summary covers them all
    plain = analyze(clip, model_dir, subtitles=write_srt(tmp_path / "s.srt"), diarise=False)
    assert {u["speaker"] for u in plain["utterances"]} == {None}
    assert [(s["speaker"], s["utterances"]) for s in plain["speakers"]] == [(None, 2)]


def write_srt(path):
    path.write_text("1\n00:00:00,000 --> 00:00:00,400\nhello\n\n2\n00:00:00,400 --> 00:00:00,900\nbye\n")
    return path

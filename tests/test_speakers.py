"""Speakers: voice prints of real speech (GRID, CREMA-D from ../shared/data; skipped when absent)
told apart, the number of speakers given, names from subtitles kept, a bad --speakers refused."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from conftest import shared_data
from emosent.segments import Segment, read_segments
from emosent.speakers import (SAMPLE_RATE_HZ, WEIGHTS_FILE, WEIGHTS_SHA256, VoiceEncoder, decode_audio, diarise,
                              load_voice_encoder)
from emosent.synthetic import write_clip

GAP_S = 0.4
GRID_C = ("id2_vcd_swwp2s.mpg", "pwij3p.mpg")  # one GRID speaker (grid-C in transcripts.csv), two clips
CREMA_1001 = ("1001_DFA_ANG_XX.flv", "1001_DFA_NEU_XX.flv")  # one CREMA-D actor, two clips
GRID_A = "bbaf2n.mpg"


def conversation(tmp_path, files) -> tuple:
    """The real clips' sound one after another (GAP_S of silence between) in an MP4 (AAC), and one
    segment per clip."""
    pieces, segments, t = [], [], 0.0
    for path in files:
        samples = decode_audio(path)
        segments.append(Segment(t, t + len(samples) / SAMPLE_RATE_HZ, path.name))
        pieces += [samples, np.zeros(round(GAP_S * SAMPLE_RATE_HZ), np.float32)]
        t += len(samples) / SAMPLE_RATE_HZ + GAP_S
    audio = np.concatenate(pieces)
    video = tmp_path / "conversation.mp4"
    write_clip(video, duration_s=len(audio) / SAMPLE_RATE_HZ,
               audio_fn=lambda times: audio[np.minimum((times * SAMPLE_RATE_HZ).astype(int), len(audio) - 1)])
    return video, segments


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    grid, crema = shared_data("video", "grid"), shared_data("video", "crema-d")
    files = [grid / GRID_C[0], crema / CREMA_1001[0], grid / GRID_C[1], crema / CREMA_1001[1]]
    return conversation(tmp_path_factory.mktemp("two"), files)


def test_the_packaged_weights_are_the_ones_recorded():
    assert hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest() == WEIGHTS_SHA256
    encoder = load_voice_encoder()
    out = encoder(torch.rand(3, 160, 40))
    assert out.shape == (3, 256) and torch.allclose(out.norm(dim=1), torch.ones(3)) and (out >= 0).all()


def test_weights_that_differ_are_refused(tmp_path):
    bad = tmp_path / "encoder.safetensors"
    data = WEIGHTS_FILE.read_bytes()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one bit pattern changed in the last weight
    with pytest.raises(ValueError, match="sha256 .* differs .* reinstall emosent"):
        load_voice_encoder.__wrapped__(bad)
    assert isinstance(load_voice_encoder(), VoiceEncoder)


def test_two_people_taking_turns_are_two_speakers_in_turn(two_people):
    video, segments = two_people
    found = diarise(video, segments)
    assert [s.speaker for s in found] == ["S1", "S2", "S1", "S2"]
    assert [(s.start, s.end, s.text) for s in found] == [(s.start, s.end, s.text) for s in segments]


def test_the_number_of_speakers_given_is_kept(tmp_path, two_people):
    video, segments = two_people
    assert {s.speaker for s in diarise(video, segments, speakers=1)} == {"S1"}
    grid, crema = shared_data("video", "grid"), shared_data("video", "crema-d")
    three, segments3 = conversation(tmp_path, [grid / GRID_C[0], crema / CREMA_1001[0], grid / GRID_A])
    assert [s.speaker for s in diarise(three, segments3, speakers=3)] == ["S1", "S2", "S3"]
    assert len({s.speaker for s in diarise(three, segments3, speakers=2)}) == 2


def test_named_segments_keep_their_names_and_the_rest_are_told_apart(two_people):
    video, segments = two_people
    named = [s if i != 1 else Segment(s.start, s.end, s.text, "S1") for i, s in enumerate(segments)]
    found = [s.speaker for s in diarise(video, named)]
    # "S1" is taken by the named segment: the voices found are S2 and S3, GRID-C's twice
    assert found[1] == "S1" and found[0] == found[2] and found[3] != found[0] and set(found) == {"S1", "S2", "S3"}
    everyone = [Segment(s.start, s.end, s.text, f"P{i}") for i, s in enumerate(segments)]
    warnings: list[str] = []
    assert diarise(video, everyone, speakers=2, warnings=warnings) == everyone
    assert warnings == ["--speakers 2 not used: every segment names its speaker"]


def test_subtitles_name_speakers_with_voice_tags_and_name_prefixes(tmp_path):
    vtt = tmp_path / "talk.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n<v Roger Bingham>We are in New York City</v>\n\n"
                   "00:00:01.000 --> 00:00:02.000\n<v.loud Esme>Hello <b>there</b>\n\n"
                   "00:00:02.000 --> 00:00:03.000\nNEIL: Hi.\n\n00:00:03.000 --> 00:00:04.000\nnote: not a name\n")
    assert [(s.speaker, s.text) for s in read_segments(vtt)] == [
        ("Roger Bingham", "We are in New York City"), ("Esme", "Hello there"), ("NEIL", "Hi."), (None, "note: not a name")]
    srt = tmp_path / "talk.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nDr. Smith: <i>Come in.</i>\n\n2\n00:00:01,000 --> 00:00:02,000\n"
                   "At 10:30 sharp.\n\n3\n00:00:02,000 --> 00:00:03,000\nWarning: wet floor.\n\n"
                   "4\n00:00:03,000 --> 00:00:04,000\nDr. Smith: Sit down.\n")
    # a capitalised name that recurs names the speaker; a capitalised word with a colon once stays text
    assert [(s.speaker, s.text) for s in read_segments(srt)] == [
        ("Dr. Smith", "Come in."), (None, "At 10:30 sharp."), (None, "Warning: wet floor."), ("Dr. Smith", "Sit down.")]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_number_of_speakers_is_one_line_and_exit_2(value, tmp_path, capsys):
    from emosent.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["analyze", str(tmp_path / "any.mp4"), "--speakers", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "--speakers" in err[-1] and value in err[-1]


def test_analyze_refuses_a_bad_number_of_speakers_before_reading_anything(tmp_path):
    from emosent.analyze import analyze

    with pytest.raises(ValueError, match="--speakers must be a whole number of at least 1, got 0"):
        analyze(tmp_path / "missing.mp4", speakers=0)
    with pytest.raises(ValueError, match="--speakers N or --no-speakers, not both"):
        analyze(tmp_path / "missing.mp4", speakers=2, diarise=False)


def test_a_file_without_sound_leaves_speakers_empty_and_says_why(tmp_path):
    silent = write_clip(tmp_path / "silent.mp4", duration_s=1.0, frame_fn=lambda i, t: np.zeros((240, 320, 3), np.uint8))
    warnings: list[str] = []
    segments = [Segment(0.0, 0.5, "a"), Segment(0.5, 1.0, "b")]
    assert diarise(silent, segments, warnings=warnings) == segments
    assert warnings == [f"{silent}: no audio stream, so speakers cannot be told apart by voice"]


def test_predict_over_a_folder_gives_each_video_its_speakers(tmp_path, two_people):
    import shutil

    from emosent import EmotionSentimentModel, ModelConfig
    from emosent.predict import predict, read_predictions
    from serving import stamp

    video, segments = two_people
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(video, folder / "talk.mp4")
    (folder / "talk.srt").write_text("".join(f"{i + 1}\n{stamp(s.start)} --> {stamp(s.end)}\nline {i}\n\n"
                                             for i, s in enumerate(segments)))
    torch.manual_seed(0)  # a random text and audio model: the conversation has no picture
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none", modalities=("text", "audio")))
    for diarise, expected in ((True, ["S1", "S2", "S1", "S2"]), (False, [None] * 4)):
        out = tmp_path / f"rows-{diarise}.jsonl"
        predict(folder, out, model, diarise=diarise, num_workers=0, trainer_kwargs={"accelerator": "cpu", "devices": 1})
        assert [r["speaker"] for r in read_predictions(out)] == expected


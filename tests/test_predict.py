"""`emosent predict`: every utterance of a folder of videos or a manifest, exactly once, in order;
resumable after SIGKILL; the same rows from 2 DDP processes as from 1; bad input refused clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli, solid_frames, tone
from emosent import EmotionSentimentModel, ModelConfig
from emosent.config import ProcessorConfig
from emosent.cli import main
from emosent.labels import EMOTIONS, SENTIMENTS
from emosent.predict import predict, read_predictions

SEGMENTS = 4  # per video, the last one outside it
VIDEOS = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none"), ProcessorConfig(num_frames=8))
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """3 videos of 3 s with subtitles beside them (one .vtt), 4 cues each of which the last lies
    outside the video, and a file named .mp4 that is not a video: 13 rows, 4 of them skipped."""
    from emosent.synthetic import write_clip

    d = tmp_path_factory.mktemp("videos")
    for v in range(VIDEOS):
        write_clip(d / f"talk{v}.mp4", duration_s=3.0, fps=25, width=160, height=120, frame_fn=solid_frames(160, 120),
                   audio_fn=tone(220.0 * (v + 1)))
        cues = [(0.1 + 0.9 * k, 0.9 + 0.9 * k, f"video {v} line {k}") for k in range(SEGMENTS - 1)] + [(5.0, 6.0, "after the end")]
        if v == 1:
            text = "WEBVTT\n\n" + "".join(f"00:00:{a:06.3f} --> 00:00:{b:06.3f}\n{t}\n\n" for a, b, t in cues)
            (d / f"talk{v}.vtt").write_text(text)
        else:
            text = "".join(f"{k + 1}\n00:00:{a:06.3f} --> 00:00:{b:06.3f}\n{t}\n\n".replace(".", ",", 2)
                           for k, (a, b, t) in enumerate(cues))
            (d / f"talk{v}.srt").write_text(text)
    (d / "broken.mp4").write_text("not a video\n")
    return d


@pytest.fixture(scope="module")
def reference(model_dir, videos, tmp_path_factory) -> list[dict]:
    """An uninterrupted run in this process, 1 device: what every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "predictions.jsonl"
    result = predict(videos, out, model_dir, batch_size=2, shard_rows=2, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    assert result.rows == VIDEOS * SEGMENTS + 1 and result.skipped.skipped == VIDEOS + 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.jsonl"]  # no parts, no temporary files
    return read_predictions(out)


def test_folder_of_videos_gives_one_row_per_utterance_in_order(reference, videos):
    rows = reference
    assert [r["file"] for r in rows] == [str(videos / "broken.mp4")] + [str(videos / f"talk{v}.mp4") for v in range(VIDEOS)
                                                                       for _ in range(SEGMENTS)]
    assert rows[0]["skip"] == "not a readable media file" and rows[0]["emotion_probs"] is None
    assert list(rows[0]) == list(rows[1])  # a skipped row has every field of a predicted one (one Parquet schema)
    # subtitles without voice tags name no speaker: each video's segments are told apart by voice (one
    # tone per video: one speaker, S1, in each); a skipped segment (after the end) is not heard
    assert [r["speaker"] for r in rows] == [None] + [*["S1"] * (SEGMENTS - 1), None] * VIDEOS
    for v in range(VIDEOS):
        mine = rows[1 + v * SEGMENTS:1 + (v + 1) * SEGMENTS]
        assert [r["text"] for r in mine] == [f"video {v} line {k}" for k in range(SEGMENTS - 1)] + ["after the end"]
        assert [r["start"] for r in mine] == pytest.approx([0.1, 1.0, 1.9, 5.0])
        assert mine[-1]["skip"] == "outside the video" and mine[-1]["emotion"] is None
        for r in mine[:-1]:
            assert r["skip"] is None
            assert list(r["emotion_probs"]) == list(EMOTIONS) and list(r["sentiment_probs"]) == list(SENTIMENTS)
            assert sum(r["emotion_probs"].values()) == pytest.approx(1, abs=1e-4)
            assert r["emotion"] == max(r["emotion_probs"], key=r["emotion_probs"].get) == r["emotions"][0]["label"]
            assert r["sentiments"][0]["label"] == r["sentiment"] and len(r["sentiments"]) == 3
            assert r["sentiments"][0]["confidence"] == pytest.approx(r["sentiment_probs"][r["sentiment"]], abs=1e-4)
            assert "experts" not in r and "face_frames" not in r  # a model without experts, reading whole frames
    # the tone differs per video, so the audio branch gives each video its own numbers
    assert rows[1]["emotion_probs"] != rows[1 + SEGMENTS]["emotion_probs"]


def test_sigkill_then_rerun_continues_and_matches(model_dir, videos, reference, tmp_path):
    out = tmp_path / "predictions.jsonl"
    parts = tmp_path / "predictions.jsonl.parts"
    args = ["--data", videos, "--out", out, "--model", model_dir, "--batch-size", "2", "--shard-rows", "2",
            "--accelerator", "cpu", "--devices", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "emosent", "predict", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list(parts.glob("shard-*.jsonl")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate()
    done = sorted(p.name for p in parts.glob("shard-*.jsonl"))
    assert 1 <= len(done) < 7 and not out.exists(), f"the kill should land mid-run: {done}\n{output}"

    again = run_cli("predict", *args)
    assert again.returncode == 0, again.stderr
    assert f"({len(done)} shards already done" in again.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]
    assert_same_rows(read_predictions(out), reference, exact=True)
    text = out.read_text()
    # finished: the same command now refuses to overwrite it
    assert main(["predict", *map(str, args)]) == 2 and out.read_text() == text


def test_two_ddp_processes_give_the_rows_of_one(model_dir, videos, reference, tmp_path):
    out = tmp_path / "ddp.jsonl"
    result = run_cli("predict", "--data", videos, "--out", out, "--model", model_dir, "--batch-size", "2", "--shard-rows", "2",
                     "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(read_predictions(out), reference, exact=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.jsonl"]


def test_a_bad_subtitle_file_is_a_counted_skip_and_an_unavailable_asr_model_one_line(model_dir, tmp_path, capsys):
    from emosent.synthetic import write_clip

    for name in ("a", "b"):
        write_clip(tmp_path / f"{name}.mp4", duration_s=1.0, fps=25, width=160, height=120, frame_fn=solid_frames(160, 120),
                   audio_fn=tone())
    (tmp_path / "a.srt").write_text("1\nthis is not a cue\n")
    (tmp_path / "b.srt").write_text("1\n00:00:00,100 --> 00:00:00,900\nhello\n")
    result = predict(tmp_path, tmp_path / "out.jsonl", model_dir, num_workers=0, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    rows = read_predictions(tmp_path / "out.jsonl")
    assert [r["skip"] for r in rows] == ["unreadable subtitles", None] and "a.srt" in rows[0]["error"]
    assert result.skipped.skipped == 1
    (tmp_path / "a.srt").unlink()  # now a video without subtitles: speech recognition with a Hub model, absent offline
    capsys.readouterr()  # the library chatter of the run above
    code = main(["predict", "--data", str(tmp_path), "--out", str(tmp_path / "again.jsonl"), "--model", str(model_dir),
                 "--asr-model", "small"])
    err = capsys.readouterr().err
    assert code == 2 and "a.mp4: no subtitles beside it" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "again.jsonl").exists() and not (tmp_path / "again.jsonl.parts").exists()


def test_parquet_holds_the_rows_of_json_lines(model_dir, videos, reference, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "out.parquet"
    predict(videos, out, model_dir, num_workers=0, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    assert pq.read_schema(out).field("emotion_probs").type.num_fields == len(EMOTIONS)  # a struct column
    assert_same_rows(read_predictions(out), reference, exact=False)
    assert not (tmp_path / "out.parquet.parts").exists()


def test_unlabelled_manifest_with_a_bad_clip(model_dir, videos, tmp_path):
    manifest = tmp_path / "rows.csv"
    manifest.write_text("path,text,start,end,emotion,sentiment,speaker\n"
                        f"{videos}/talk0.mp4,hello there,0.1,0.9,,,Ann\n"
                        f"{videos}/talk1.mp4,labelled too,0.5,2.0,Joy,positive,\n"
                        f"{videos}/missing.mp4,no such clip,,,,,Bob\n"
                        f"{videos}/talk2.mp4,after the end,5.0,6.0,,,Ann\n")  # the video is 3 s long
    out = tmp_path / "out.jsonl"
    result = predict(manifest, out, model_dir, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    rows = read_predictions(out)
    assert [r["source"] for r in rows] == [f"{manifest}:{line}" for line in (2, 3, 4, 5)]
    assert rows[0]["emotion"] in EMOTIONS and "label_emotion" not in rows[0]
    assert (rows[1]["label_emotion"], rows[1]["label_sentiment"]) == ("joy", "positive")
    assert rows[2]["skip"] == "file not found" and "missing.mp4" in rows[2]["error"]
    assert rows[3]["skip"] == "time range outside the file" and "3.00 s long" in rows[3]["error"]
    assert result.skipped.summary("rows").startswith("skipped 2 of 4 rows: 1 file not found, 1 time range outside the file")
    predict(manifest, tmp_path / "out.parquet", model_dir, num_workers=0, trainer_kwargs={"accelerator": "cpu", "devices": 1})
    table = read_predictions(tmp_path / "out.parquet")  # the labels of row 2 kept, though row 1 has none
    assert [(r["label_emotion"], r["label_sentiment"]) for r in table] == [(None, None), ("joy", "positive"), (None, None), (None, None)]
    # the manifest's speaker column, predicted and skipped rows alike, in both formats
    assert [r["speaker"] for r in rows] == [r["speaker"] for r in table] == ["Ann", None, "Bob", "Ann"]


def test_a_run_that_predicts_no_row_fails_and_keeps_the_reasons(model_dir, videos, tmp_path, capsys):
    manifest = tmp_path / "rows.csv"
    manifest.write_text("path,text,start,end\n"
                        f"{videos}/missing.mp4,no such clip,,\n"
                        f"{videos}/talk2.mp4,after the end,5.0,6.0\n")  # the video is 3 s long
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--data", str(manifest), "--out", str(out), "--model", str(model_dir),
                 "--accelerator", "cpu", "--devices", "1", "--num-workers", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = [x for x in err.splitlines() if x.startswith("emosent predict: error:")]
    assert f"{out}: 0 of 2 rows predicted, skipped 2 of 2 rows: 1 file not found, 1 time range outside the file" in line
    assert [r["skip"] for r in read_predictions(out)] == ["file not found", "time range outside the file"]


def test_a_model_that_outputs_nan_is_refused_by_name(videos, tmp_path, capsys):
    torch.manual_seed(0)
    model = EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none"), ProcessorConfig(num_frames=8))
    with torch.no_grad():
        model.sentiment_head[-1].weight.fill_(3e38)  # finite weights (inf ones are refused on load) whose outputs overflow
    model_dir = model.save_pretrained(tmp_path / "model")
    manifest = tmp_path / "rows.csv"
    manifest.write_text(f"path,text,start,end\n{videos}/talk0.mp4,hello there,0.1,0.9\n")
    code = main(["predict", "--data", str(manifest), "--out", str(tmp_path / "out.jsonl"), "--model", str(model_dir),
                 "--accelerator", "cpu", "--devices", "1", "--num-workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and f"model {model_dir} produced NaN/inf for {manifest}:2 " in err, err
    assert not (tmp_path / "out.jsonl").exists() and not list((tmp_path / "out.jsonl.parts").glob("shard-*"))


@pytest.mark.parametrize("case, expected", [
    ("exists", "already exists; emosent predict never overwrites"),
    ("suffix", "name a JSON Lines file ending in .jsonl, or a Parquet file ending in .parquet"),
    ("no_data", "no such file or folder"),
    ("bad_label", "unknown emotion label in 1 row(s) (line 2: 'happy')"),
    ("other_run", "holds a run with other data"),
])
def test_bad_input_is_one_clear_line(case, expected, model_dir, videos, tmp_path, capsys):
    out, data = tmp_path / "out.jsonl", videos
    if case == "exists":
        out.write_text("my notes\n")
    elif case == "suffix":
        out = tmp_path / "out.json"
    elif case == "no_data":
        data = tmp_path / "nowhere"
    elif case == "bad_label":
        data = tmp_path / "rows.csv"
        data.write_text(f"path,text,emotion,sentiment\n{videos}/talk0.mp4,hi,happy,positive\n")
    elif case == "other_run":
        (tmp_path / "out.jsonl.parts").mkdir()
        (tmp_path / "out.jsonl.parts" / "meta.json").write_text(json.dumps({"format": 1, "fingerprint": "another"}))
    code = main(["predict", "--data", str(data), "--out", str(out), "--model", str(model_dir), "--accelerator", "cpu",
                 "--devices", "1"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    if case == "exists":
        assert out.read_text() == "my notes\n"


def assert_same_rows(rows: list[dict], expected: list[dict], *, exact: bool) -> None:
    """Row by row; exact=False allows float noise from other thread counts or batches."""
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        if exact or want["skip"] is not None:
            assert got == want
        else:
            assert_close(got, want, where=want["source"])


def assert_close(got, want, where: str) -> None:
    """The same structure, labels and keys in the same order; numbers within 2e-4."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}: {key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=2e-4), where  # a 4-decimal confidence may round the other way
    else:
        assert got == want, where


def test_the_faster_face_path_matches_the_reference_path():
    """crop_faces resizes for detection in uint8 and greys only the window each crop reads; the
    reference (the code before) resized in float and greyed whole frames. Same faces found, boxes
    within a pixel of the reference detection, and the windowed crop equal to the whole-frame one."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image
    from skimage.data import astronaut

    from emosent.data import faces

    frames = np.full((4, 480, 640, 3), 40, np.uint8)
    for k in range(4):  # the face at several places, one touching the right edge (border padding)
        x = (40, 200, 330, 400)[k]
        frames[k, 100:340, x:x + 240] = np.asarray(Image.fromarray(astronaut()).resize((240, 240)))
    got, mask = faces.crop_faces(frames, 0.1, 320)

    small = F.interpolate(torch.as_tensor(frames, dtype=torch.float32).permute(0, 3, 1, 2), size=(240, 320), mode="bilinear",
                          antialias=True, align_corners=False).clamp(0, 255).permute(0, 2, 3, 1)
    boxes = [d.boxes for d in faces.detector(40).detect(small)]
    assert mask.all()
    grey = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True)
    found = faces.main_faces(frames, 320)
    for k in range(4):
        best = int(np.argmax((boxes[k][:, 2] - boxes[k][:, 0]) * (boxes[k][:, 3] - boxes[k][:, 1])))
        assert np.abs(found[k][0] - boxes[k][best] * 2).max() < 1.0
    theta = torch.stack([faces.face_affine(*f, 0.1, 480, 640) for f in found])
    grid = F.affine_grid(theta, [4, 1, 128, 128], align_corners=False)
    want = (F.avg_pool2d(F.grid_sample(grey, grid, mode="bilinear", padding_mode="border", align_corners=False), 2) / 255 - 0.5) * 2
    assert (got - want).abs().max() < 1e-4  # the same boxes: the windowed crop is the whole-frame crop

"""Tests for the synthetic MELD-style sample writer (emosent.synthetic)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from emosent.synthetic import (
    EMOTION_TEMPLATES,
    EMOTION_TONE_HZ,
    MELD_COLUMNS,
    MELD_SPLITS,
    SAMPLE_SENTIMENT,
    make_sample,
    write_clip,
)
from emosent.labels import EMOTIONS

SR = 16_000
TIMESTAMP_RE = re.compile(r"^\d{2}:\d{2}:\d{2},\d{3}$")


def solid_frames(width: int, height: int, rgb=(200, 40, 40)):
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = rgb
    return lambda i, t: frame


def sine(freq_hz: float, amplitude: float = 0.3):
    return lambda t: (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def decode_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])


def dominant_hz(samples: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def read_split(root: Path, split: str) -> list[dict[str, str]]:
    csv_name, _ = MELD_SPLITS[split]
    with (root / csv_name).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def clip_path(root: Path, split: str, row: dict[str, str]) -> Path:
    _, clip_dir = MELD_SPLITS[split]
    return root / clip_dir / f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"


def all_clips(root: Path):
    for split in MELD_SPLITS:
        for row in read_split(root, split):
            yield split, row, clip_path(root, split, row)


def parse_timestamp(stamp: str) -> float:
    hms, ms = stamp.split(",")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + int(ms) / 1000


# --- write_clip ---------------------------------------------------------------


def test_write_clip_has_h264_and_aac_with_expected_shape(tmp_path):
    path = write_clip(
        tmp_path / "clip.mp4",
        duration_s=2.0,
        fps=29.97,
        width=176,
        height=144,
        frame_fn=solid_frames(176, 144),
        audio_fn=sine(440),
        gop=10,
    )
    assert path == tmp_path / "clip.mp4"
    with av.open(str(path)) as c:
        (video,) = c.streams.video
        (audio,) = c.streams.audio
        assert video.codec_context.name == "h264"
        assert audio.codec_context.name == "aac"
        assert (video.width, video.height) == (176, 144)
        assert video.frames == round(2.0 * 29.97) == 60
        assert float(video.average_rate) == pytest.approx(29.97, abs=0.01)
        assert audio.rate == SR
        assert audio.channels == 1
        assert c.duration / 1e6 == pytest.approx(2.0, abs=0.1)

    frames = decode_frames(path)
    assert len(frames) == 60
    # Lossy, but a solid colour must come back close to what was written.
    np.testing.assert_allclose(frames[0].reshape(-1, 3).mean(0), (200, 40, 40), atol=8)

    samples = decode_audio(path)
    assert len(samples) / SR == pytest.approx(2.0, abs=0.15)
    assert dominant_hz(samples) == pytest.approx(440, rel=0.02)


def test_write_clip_gop_sets_keyframe_interval(tmp_path):
    path = write_clip(tmp_path / "g.mp4", duration_s=2.0, fps=25, width=64, height=48,
                      frame_fn=solid_frames(64, 48), gop=10)  # fmt: skip
    with av.open(str(path)) as c:
        keyframes = [i for i, p in enumerate(c.demux(video=0)) if p.size and p.is_keyframe]
    assert keyframes == list(range(0, 50, 10))


def test_write_clip_without_frame_fn_has_no_video(tmp_path):
    path = write_clip(tmp_path / "a.mp4", duration_s=1.5, audio_fn=sine(300))
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 0
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
    assert len(decode_audio(path)) / SR == pytest.approx(1.5, abs=0.15)


def test_write_clip_without_audio_fn_has_no_audio(tmp_path):
    path = write_clip(tmp_path / "v.mp4", duration_s=1.0, fps=24, width=64, height=48,
                      frame_fn=solid_frames(64, 48))  # fmt: skip
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 0
        assert c.streams.video[0].frames == 24
    assert len(decode_frames(path)) == 24


def test_write_clip_zero_frames_keeps_an_empty_video_stream(tmp_path):
    path = write_clip(tmp_path / "z.mp4", duration_s=0.0, width=64, height=48,
                      frame_fn=solid_frames(64, 48), audio_fn=sine(300))  # fmt: skip
    with av.open(str(path)) as c:
        assert [s.codec_context.name for s in c.streams.video] == ["h264"]
        assert len(c.streams.audio) == 1
    assert decode_frames(path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # neither callback
        {"width": 63, "height": 48, "frame_fn": solid_frames(63, 48)},
        {"width": 64, "height": 47, "frame_fn": solid_frames(64, 47)},
    ],
)
def test_write_clip_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_clip(tmp_path / "bad.mp4", duration_s=1.0, **kwargs)


# --- make_sample --------------------------------------------------------------

N_PER_CLASS = 2
EXPECTED_PER_EMOTION = {"train": N_PER_CLASS, "dev": 2, "test": 2}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("s") / "meld", n_per_class=N_PER_CLASS, seed=0)


def test_sample_csvs_have_meld_columns_and_class_counts(sample):
    for split, (csv_name, _) in MELD_SPLITS.items():
        with (sample / csv_name).open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
        assert tuple(header) == MELD_COLUMNS
        rows = read_split(sample, split)
        assert Counter(r["Emotion"] for r in rows) == {e: EXPECTED_PER_EMOTION[split] for e in EMOTIONS}
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        for r in rows:
            assert r["Sentiment"] == SAMPLE_SENTIMENT[r["Emotion"]]
            assert TIMESTAMP_RE.match(r["StartTime"]) and TIMESTAMP_RE.match(r["EndTime"])
            assert r["Utterance"].strip()
        ids = [(r["Dialogue_ID"], r["Utterance_ID"]) for r in rows]
        assert len(set(ids)) == len(ids)
        # Utterances are grouped into dialogues, not one dialogue each.
        assert len({r["Dialogue_ID"] for r in rows}) < len(rows)


def test_sample_clips_exist_decode_and_vary(sample):
    fps_seen, sizes_seen = set(), set()
    for _, row, path in all_clips(sample):
        assert path.is_file(), path
        with av.open(str(path)) as c:
            video, audio = c.streams.video[0], c.streams.audio[0]
            assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
            duration_s = video.frames / float(video.average_rate)
            fps_seen.add(round(float(video.average_rate), 2))
            sizes_seen.add((video.width, video.height))
            n_decoded = sum(1 for _ in c.decode(video=0))
        assert n_decoded == video.frames > 0
        assert 1.0 - 0.05 <= duration_s <= 4.0 + 0.05
        csv_duration_s = parse_timestamp(row["EndTime"]) - parse_timestamp(row["StartTime"])
        assert duration_s == pytest.approx(csv_duration_s, abs=0.05)
    assert len(fps_seen) > 1
    assert len(sizes_seen) > 1


def test_make_sample_refuses_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_sample(tmp_path, n_per_class=1)


def test_make_sample_is_deterministic_per_seed(sample, tmp_path):
    again = make_sample(tmp_path / "again", n_per_class=N_PER_CLASS, seed=0)
    other = make_sample(tmp_path / "other", n_per_class=N_PER_CLASS, seed=1)
    for csv_name, _ in MELD_SPLITS.values():
        assert (again / csv_name).read_bytes() == (sample / csv_name).read_bytes()
        assert (other / csv_name).read_bytes() != (sample / csv_name).read_bytes()

    n_frames_differing = 0
    for split, row, path in all_clips(sample):
        twin = clip_path(again, split, row)
        np.testing.assert_array_equal(first_frame(twin), first_frame(path))
        np.testing.assert_array_equal(decode_audio(twin), decode_audio(path))
        other_path = clip_path(other, split, row)
        if other_path.exists():
            a, b = first_frame(other_path), first_frame(path)
            n_frames_differing += a.shape != b.shape or not np.array_equal(a, b)
    assert n_frames_differing > 0


def test_each_emotion_has_its_own_tone(sample):
    """The decoded audio's strongest frequency identifies the emotion."""
    peaks: dict[str, list[float]] = {e: [] for e in EMOTIONS}
    for _, row, path in all_clips(sample):
        peaks[row["Emotion"]].append(dominant_hz(decode_audio(path)))
    for emotion, found in peaks.items():
        assert found == pytest.approx([EMOTION_TONE_HZ[emotion]] * len(found), rel=0.05), emotion
    # Tones of different emotions are far apart (>= 30 % on a log scale).
    ordered = sorted(EMOTION_TONE_HZ.values())
    assert all(hi / lo > 1.3 for lo, hi in zip(ordered, ordered[1:]))


def test_each_emotion_has_its_own_look(sample):
    """Nearest-centroid on mean chromaticity + motion: dev/test clips are classified from train."""

    def features(path: Path) -> np.ndarray:
        # Every 4th pixel each way: plenty for colour and motion, 16x less work.
        frames = np.stack(decode_frames(path))[:, ::4, ::4].astype(np.float32)
        rgb = frames.reshape(-1, 3).mean(0)
        chroma = rgb / rgb.sum()
        motion = np.abs(np.diff(frames, axis=0)).mean() / 255  # 0 for the static neutral clips
        return np.concatenate([chroma, [motion]])

    train = [(row["Emotion"], features(p)) for s, row, p in all_clips(sample) if s == "train"]
    centroids = {e: np.mean([f for lab, f in train if lab == e], axis=0) for e in EMOTIONS}
    for split, row, path in all_clips(sample):
        if split == "train":
            continue
        f = features(path)
        predicted = min(centroids, key=lambda e: np.linalg.norm(centroids[e] - f))
        assert predicted == row["Emotion"], path


def test_each_emotion_has_its_own_wording(sample):
    """Every emotion's texts vary, and its templates carry words no other emotion uses."""
    texts = {e: set() for e in EMOTIONS}
    for _, row, _ in all_clips(sample):
        texts[row["Emotion"]].add(row["Utterance"])
    assert all(len(t) > 1 for t in texts.values())

    def words(emotion: str) -> set[str]:
        return set(re.findall(r"[a-z']+", " ".join(EMOTION_TEMPLATES[emotion]).lower()))

    for emotion in EMOTIONS:
        others = set().union(*(words(e) for e in EMOTIONS if e != emotion))
        assert len(words(emotion) - others) >= 5, emotion

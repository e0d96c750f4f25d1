"""Synthetic MELD-style sample data for tests, demos and smoke training runs.

Two public entry points:

* :func:`write_clip` writes one H.264 + AAC mp4 from per-frame and per-sample
  callbacks, with PyAV only (no ffmpeg binary, no temporary files).
* :func:`make_sample` writes a tiny dataset in the MELD layout (three CSVs plus
  one mp4 per utterance) in which every emotion is learnable from any single
  modality: each emotion has its own wording, its own look (hue + moving
  pattern) and its own tone (pitch + amplitude-modulation rate).

Everything is drawn from ``numpy.random.default_rng`` seeded by the caller and
x264 runs single-threaded, so the same seed gives byte-identical CSVs and
identical decoded frames and audio on any machine.
"""

from __future__ import annotations

import colorsys
import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emosent.data.manifest import MELD_CLIP_DIRS
from emosent.labels import EMOTIONS, SENTIMENTS

FrameFn = Callable[[int, float], np.ndarray]
AudioFn = Callable[[np.ndarray], np.ndarray]
TimedFrames = Iterator[tuple[float, av.frame.Frame]]

SAMPLE_RATE_HZ = 16_000
AUDIO_BIT_RATE_BPS = 48_000
AAC_FRAME_SAMPLES = 1024  # AAC-LC frame size, used if the encoder reports none
# Largest denominator kept when turning a float fps into a Fraction; enough
# for NTSC-style rates such as 30000/1001.
MAX_FPS_DENOMINATOR = 1001

# Sentiment is a pure function of emotion, so a model can learn it from the
# sample; real MELD labels sentiment independently.
SAMPLE_SENTIMENT: dict[str, str] = {
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "joy": "positive",
    "surprise": "positive",
    "neutral": "neutral",
}
assert set(SAMPLE_SENTIMENT) == set(EMOTIONS)
assert set(SAMPLE_SENTIMENT.values()) <= set(SENTIMENTS)

MELD_COLUMNS = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)

# split name -> (CSV file name, clip directory), as in the MELD.Raw release.
MELD_SPLITS: dict[str, tuple[str, str]] = {split: (f"{split}_sent_emo.csv", clip_dir) for split, clip_dir in MELD_CLIP_DIRS.items()}

CLIP_MIN_S = 1.0
CLIP_MAX_S = 4.0
CLIP_FPS_CHOICES = (24.0, 25.0, 29.97, 30.0)
CLIP_SIZES_WH = ((160, 120), (176, 144), (240, 180), (320, 240), (256, 144))
MAX_CLIP_FRAMES = math.ceil(CLIP_MAX_S * max(CLIP_FPS_CHOICES)) + 1
DIALOGUE_MIN_UTTERANCES = 2
DIALOGUE_MAX_UTTERANCES = 5
# Gap between consecutive utterances of a dialogue in the CSV timestamps.
UTTERANCE_GAP_S = 0.5

# --- tone: one pitch per emotion, log-spaced 150..2000 Hz (about 1.5x apart,
# i.e. well separated on a mel scale), plus a distinct amplitude-modulation rate.
EMOTION_TONE_HZ: dict[str, float] = {
    "sadness": 150.0,
    "anger": 231.0,
    "disgust": 356.0,
    "neutral": 548.0,
    "fear": 844.0,
    "joy": 1299.0,
    "surprise": 2000.0,
}
EMOTION_AM_HZ: dict[str, float] = {
    "sadness": 0.5,
    "anger": 7.0,
    "disgust": 2.0,
    "neutral": 0.0,  # steady tone
    "fear": 11.0,
    "joy": 4.0,
    "surprise": 3.0,
}
TONE_AMPLITUDE = 0.3
TONE_AM_DEPTH = 0.4  # fraction of the amplitude that the AM swings
TONE_PITCH_JITTER = 0.03  # relative, per clip; far below the 1.5x spacing
TONE_NOISE_STD = 0.01

# --- look: one hue per emotion (degrees) plus one moving pattern per emotion.
# Neutral is nearly grey and static so that "no colour, no motion" is its cue.
EMOTION_HUE_DEG: dict[str, float] = {
    "anger": 0.0,  # red
    "joy": 55.0,  # yellow
    "disgust": 100.0,  # green
    "surprise": 180.0,  # cyan
    "sadness": 225.0,  # blue
    "fear": 280.0,  # purple
    "neutral": 30.0,  # irrelevant: saturation is low
}
EMOTION_SATURATION: dict[str, float] = {e: 0.85 for e in EMOTIONS} | {"neutral": 0.08}
HUE_JITTER_DEG = 8.0
SATURATION_JITTER = 0.05
# Pattern value p in [0, 1] maps to brightness DARK + (1 - DARK) * p, so
# patterns stay visible after per-image colour normalisation.
PATTERN_DARK = 0.25
NEUTRAL_PATTERN_LEVEL = 0.6
GRAIN_STD = 6.0  # per-clip static grain, in 8-bit levels
FLICKER_STD = 0.03  # per-frame brightness jitter, relative

# --- wording: emotion-specific keywords inside several templates per emotion;
# the shared fillers make the texts vary without leaking the label.
EMOTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "anger": (
        "I am so furious about the {thing}!",
        "How dare you touch my {thing}, {name}?",
        "This is outrageous, I hate going to the {place}!",
        "Stop yelling at me about the {thing}, I'm livid!",
        "{name}, you make me so angry, get out of the {place}!",
    ),
    "disgust": (
        "Ew, that {thing} is disgusting.",
        "Gross! Who left the {thing} in the {place}?",
        "That smells revolting, {name}.",
        "Yuck, I can't stand the {thing}, it's nasty.",
        "Eww, the {place} is filthy and vile.",
    ),
    "fear": (
        "I'm scared, did you hear that noise in the {place}?",
        "Oh no, I'm terrified of the {thing}!",
        "{name}, I'm afraid something bad will happen.",
        "Please don't leave me alone in the {place}, I'm frightened.",
        "I'm so nervous, what if the {thing} is dangerous?",
    ),
    "joy": (
        "I'm so happy about the {thing}!",
        "This is wonderful, {name}, I love it!",
        "Yay! We're going to the {place}, how great!",
        "That's fantastic news about the {thing}, I'm thrilled.",
        "Best day ever, {name}, I'm delighted!",
    ),
    "neutral": (
        "Okay, I'll bring the {thing} to the {place}.",
        "{name}, the meeting is at {time}.",
        "Sure, we can talk about the {thing} later.",
        "I think the {thing} is in the {place}.",
        "The {place} opens at {time}, {name}.",
    ),
    "sadness": (
        "I miss {name} so much.",
        "I feel so lonely since we left the {place}.",
        "I'm sorry, I'm just really sad about the {thing}.",
        "Everything fell apart, I'm heartbroken, {name}.",
        "I cried all night over the {thing}.",
    ),
    "surprise": (
        "Wow! You got me a {thing}?",
        "What?! {name} is here?",
        "No way, really? I can't believe it, {name}!",
        "Oh my god, I didn't expect a {thing} in the {place}!",
        "Whoa, since when is there a {place} here?",
    ),
}
FILLER_NAMES = ("Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe", "Gunther", "Janice")
FILLER_THINGS = ("couch", "sandwich", "guitar", "duck", "lasagna", "letter", "ring", "laptop")
FILLER_PLACES = ("coffee house", "apartment", "museum", "office", "hallway", "kitchen")
FILLER_TIMES = ("nine", "noon", "three thirty", "five", "eight tonight")
SPEAKERS = FILLER_NAMES[:6]
MAX_SEASON = 10
MAX_EPISODE = 24
EPISODE_LENGTH_S = 20 * 60


# ---------------------------------------------------------------------------
# write_clip
# ---------------------------------------------------------------------------


def write_clip(
    path: str | Path,
    *,
    duration_s: float,
    fps: float | Fraction = 25,
    width: int = 320,
    height: int = 240,
    frame_fn: FrameFn | None = None,
    audio_fn: AudioFn | None = None,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    gop: int | None = None,
    preset: str = "ultrafast",
) -> Path:
    """Write an mp4 with an H.264 video and/or a mono AAC audio stream.

    ``frame_fn(i, t_s)`` returns frame ``i`` (shown at ``t_s`` seconds) as RGB
    ``uint8 [height, width, 3]``; ``audio_fn(t)`` maps sample times in seconds
    to mono float32 samples in [-1, 1]. A ``None`` callback means the file has
    no stream of that kind. The video has ``round(duration_s * fps)`` frames,
    possibly 0 (an empty video stream). ``gop`` sets the keyframe interval.
    ``preset`` is x264's: "ultrafast" (no B-frames, no CABAC, no deblocking) keeps clips cheap to
    write; "medium", x264's default, writes B-frames as most encoded video has them.
    """
    if frame_fn is None and audio_fn is None:
        raise ValueError("write_clip needs frame_fn, audio_fn or both")
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    if duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    rate = Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR)
    n_frames = round(duration_s * rate)
    n_samples = round(duration_s * sample_rate_hz)
    # The mp4 muxer drops tracks without samples from the final moov box; an
    # "empty moov" written up front (fragmented mp4) keeps an empty stream.
    has_empty_stream = (frame_fn is not None and n_frames == 0) or (audio_fn is not None and n_samples == 0)
    options = {"movflags": "empty_moov"} if has_empty_stream else {}

    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        video = _add_video_stream(container, rate, width, height, gop, preset) if frame_fn is not None else None
        audio = _add_audio_stream(container, sample_rate_hz) if audio_fn is not None else None
        # Opens the encoders, so the AAC frame size is known below.
        container.start_encoding()

        video_frames = _video_frames(frame_fn, rate, n_frames, width, height) if video is not None else iter(())
        audio_frames = _audio_frames(audio, audio_fn, n_samples, sample_rate_hz) if audio is not None else iter(())
        # Feed the muxer in presentation order so the mp4 chunks interleave.
        for stream, frame in _interleave(video, video_frames, audio, audio_frames):
            container.mux(stream.encode(frame))
        for stream in (video, audio):
            if stream is not None:
                container.mux(stream.encode(None))  # flush delayed packets
    return path


def _add_video_stream(
    container: av.container.OutputContainer, rate: Fraction, width: int, height: int, gop: int | None, preset: str
) -> av.VideoStream:
    stream = container.add_stream("libx264", rate=rate)
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"  # the one pixel format every H.264 decoder reads
    stream.codec_context.time_base = 1 / rate
    if gop is not None:
        stream.codec_context.gop_size = gop
    # one thread makes x264's output independent of the machine's core count
    # (auto threading changes the bitstream), which keeps make_sample reproducible.
    stream.codec_context.options = {"preset": preset}
    stream.codec_context.thread_count = 1
    return stream


def _add_audio_stream(container: av.container.OutputContainer, sample_rate_hz: int) -> av.AudioStream:
    stream = container.add_stream("aac", rate=sample_rate_hz, layout="mono")
    stream.codec_context.format = "fltp"
    stream.codec_context.bit_rate = AUDIO_BIT_RATE_BPS
    stream.codec_context.time_base = Fraction(1, sample_rate_hz)
    return stream


def _video_frames(frame_fn: FrameFn, rate: Fraction, n_frames: int, width: int, height: int) -> TimedFrames:
    """Yield (time_s, VideoFrame) with pts counted in frames (time base 1/fps)."""
    for i in range(n_frames):
        t_s = float(i / rate)
        rgb = np.asarray(frame_fn(i, t_s))
        if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"frame {i}: expected uint8 {(height, width, 3)}, got {rgb.dtype} {rgb.shape}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = i
        frame.time_base = 1 / rate
        yield t_s, frame


def _audio_frames(
    stream: av.AudioStream, audio_fn: AudioFn, n_samples: int, sample_rate_hz: int
) -> TimedFrames:
    """Yield (time_s, AudioFrame) chunks of the encoder's frame size, pts in samples."""
    samples = np.asarray(audio_fn(np.arange(n_samples) / sample_rate_hz), dtype=np.float32)
    if samples.shape != (n_samples,):
        raise ValueError(f"audio_fn must return shape ({n_samples},), got {samples.shape}")
    samples = np.clip(samples, -1.0, 1.0)
    chunk = stream.codec_context.frame_size or AAC_FRAME_SAMPLES
    for start in range(0, n_samples, chunk):
        # fltp mono: one plane, so the array is [channels=1, samples].
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + chunk], format="fltp", layout="mono")
        frame.sample_rate = sample_rate_hz
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate_hz)
        yield start / sample_rate_hz, frame


def _interleave(
    video: av.VideoStream | None, video_frames: TimedFrames, audio: av.AudioStream | None, audio_frames: TimedFrames
) -> Iterator[tuple[av.stream.Stream, av.frame.Frame]]:
    """Merge the two timed frame iterators by time, yielding (stream, frame)."""
    next_video = next(video_frames, None)
    next_audio = next(audio_frames, None)
    while next_video is not None or next_audio is not None:
        if next_audio is None or (next_video is not None and next_video[0] <= next_audio[0]):
            yield video, next_video[1]
            next_video = next(video_frames, None)
        else:
            yield audio, next_audio[1]
            next_audio = next(audio_frames, None)


# ---------------------------------------------------------------------------
# make_sample
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Utterance:
    emotion: str
    text: str
    speaker: str
    duration_s: float
    fps: float
    width: int
    height: int


def make_sample(out: str | Path, n_per_class: int = 10, seed: int = 0) -> Path:
    """Write a small learnable dataset in the MELD layout into ``out``.

    Train has ``n_per_class`` utterances per emotion, dev and test
    ``max(2, n_per_class // 2)`` each. ``out`` is created and must not already
    hold files. The same ``seed`` gives identical CSVs and identical clips.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    per_class = {"train": n_per_class, "dev": max(2, n_per_class // 2), "test": max(2, n_per_class // 2)}
    for split, (csv_name, clip_dir) in MELD_SPLITS.items():
        dialogues = _draw_dialogues(rng, per_class[split])
        (out / clip_dir).mkdir()
        _write_csv(out / csv_name, dialogues, rng)
        for dia_id, dialogue in enumerate(dialogues):
            for utt_id, utt in enumerate(dialogue):
                _write_sample_clip(out / clip_dir / f"dia{dia_id}_utt{utt_id}.mp4", utt, rng)
    return out


def _draw_dialogues(rng: np.random.Generator, n_per_class: int) -> list[list[_Utterance]]:
    """Shuffle n_per_class utterances per emotion and cut them into dialogues."""
    emotions = [e for e in EMOTIONS for _ in range(n_per_class)]
    order = rng.permutation(len(emotions))
    utterances = [_draw_utterance(rng, emotions[i]) for i in order]
    dialogues = []
    start = 0
    while start < len(utterances):
        size = int(rng.integers(DIALOGUE_MIN_UTTERANCES, DIALOGUE_MAX_UTTERANCES + 1))
        dialogues.append(utterances[start : start + size])
        start += size
    return dialogues


def _draw_utterance(rng: np.random.Generator, emotion: str) -> _Utterance:
    templates = EMOTION_TEMPLATES[emotion]
    text = templates[rng.integers(len(templates))].format(
        name=_pick(rng, FILLER_NAMES),
        thing=_pick(rng, FILLER_THINGS),
        place=_pick(rng, FILLER_PLACES),
        time=_pick(rng, FILLER_TIMES),
    )
    width, height = CLIP_SIZES_WH[rng.integers(len(CLIP_SIZES_WH))]
    return _Utterance(
        emotion=emotion,
        text=text,
        speaker=_pick(rng, SPEAKERS),
        # Whole milliseconds so the CSV timestamps are exact.
        duration_s=round(float(rng.uniform(CLIP_MIN_S, CLIP_MAX_S)), 3),
        fps=_pick(rng, CLIP_FPS_CHOICES),
        width=width,
        height=height,
    )


def _pick(rng: np.random.Generator, options: tuple):
    """One element of ``options``, keeping its Python type (rng.choice gives numpy scalars)."""
    return options[rng.integers(len(options))]


def _write_csv(path: Path, dialogues: list[list[_Utterance]], rng: np.random.Generator) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MELD_COLUMNS)
        sr_no = 1
        for dia_id, dialogue in enumerate(dialogues):
            season = int(rng.integers(1, MAX_SEASON + 1))
            episode = int(rng.integers(1, MAX_EPISODE + 1))
            start_s = float(rng.integers(0, EPISODE_LENGTH_S))  # dialogue starts somewhere in the episode
            for utt_id, utt in enumerate(dialogue):
                end_s = start_s + utt.duration_s
                writer.writerow(
                    (sr_no, utt.text, utt.speaker, utt.emotion, SAMPLE_SENTIMENT[utt.emotion],
                     dia_id, utt_id, season, episode, _timestamp(start_s), _timestamp(end_s))
                )  # fmt: skip
                sr_no += 1
                start_s = end_s + UTTERANCE_GAP_S


def _timestamp(seconds: float) -> str:
    """Format seconds as MELD's 'HH:MM:SS,mmm'."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def _write_sample_clip(path: Path, utt: _Utterance, rng: np.random.Generator) -> None:
    # A child generator per clip: however much one clip draws, the parent
    # stream (and so every later clip and row) stays the same.
    clip_rng = np.random.default_rng(rng.integers(2**63))
    write_clip(
        path,
        duration_s=utt.duration_s,
        fps=utt.fps,
        width=utt.width,
        height=utt.height,
        frame_fn=_emotion_frame_fn(utt.emotion, utt.width, utt.height, clip_rng),
        audio_fn=_emotion_audio_fn(utt.emotion, clip_rng),
    )


# --- tone -------------------------------------------------------------------


def _emotion_audio_fn(emotion: str, rng: np.random.Generator) -> AudioFn:
    pitch_hz = EMOTION_TONE_HZ[emotion] * (1 + rng.uniform(-TONE_PITCH_JITTER, TONE_PITCH_JITTER))
    am_hz = EMOTION_AM_HZ[emotion]
    phase = rng.uniform(0, 2 * np.pi)
    noise_seed = int(rng.integers(2**63))

    def audio_fn(t: np.ndarray) -> np.ndarray:
        envelope = 1 - TONE_AM_DEPTH * 0.5 * (1 - np.cos(2 * np.pi * am_hz * t))
        tone = TONE_AMPLITUDE * envelope * np.sin(2 * np.pi * pitch_hz * t + phase)
        noise = np.random.default_rng(noise_seed).normal(0, TONE_NOISE_STD, t.shape)
        return (tone + noise).astype(np.float32)

    return audio_fn


# --- look -------------------------------------------------------------------


def _emotion_frame_fn(emotion: str, width: int, height: int, rng: np.random.Generator) -> FrameFn:
    """Frames = emotion hue x emotion-specific moving brightness pattern + grain."""
    hue = (EMOTION_HUE_DEG[emotion] + rng.uniform(-HUE_JITTER_DEG, HUE_JITTER_DEG)) % 360
    saturation = EMOTION_SATURATION[emotion] + rng.uniform(-SATURATION_JITTER, SATURATION_JITTER)
    base_rgb = np.array(colorsys.hsv_to_rgb(hue / 360, max(saturation, 0.0), 1.0), dtype=np.float32) * 255
    phase = rng.uniform(0, 2 * np.pi)
    # Coordinates in [0, 1) of the frame, so patterns scale with the frame size
    # and survive resizing (e.g. to 112x112).
    v, u = np.meshgrid(
        np.arange(height, dtype=np.float32) / height, np.arange(width, dtype=np.float32) / width, indexing="ij"
    )
    pattern = _PATTERNS[emotion]
    # Static per-clip grain is far cheaper than fresh noise each frame.
    grain = rng.normal(0, GRAIN_STD, (height, width)).astype(np.float32)
    # Drawn up front (not per call) so a frame does not depend on call order.
    flicker = rng.normal(1, FLICKER_STD, MAX_CLIP_FRAMES).astype(np.float32)

    def frame_fn(i: int, t_s: float) -> np.ndarray:
        p = pattern(u, v, t_s, phase)
        brightness = (PATTERN_DARK + (1 - PATTERN_DARK) * p) * flicker[i]
        # Channel by channel on contiguous 2-D planes: broadcasting over a
        # trailing axis of length 3 is ~4x slower, and this runs for every frame.
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        for c in range(3):
            plane = brightness * base_rgb[c]
            plane += grain
            np.clip(plane, 0, 255, out=plane)
            rgb[..., c] = plane
        return rgb

    return frame_fn


def _wave(x):
    return 0.5 + 0.5 * np.sin(x)


def _horizontal_stripes_fast_down(u, v, t, phase):  # anger: agitated
    return _wave(2 * np.pi * (5 * v - 2.0 * t) + phase)


def _diagonal_stripes(u, v, t, phase):  # disgust
    return _wave(2 * np.pi * (3 * (u + v) - 0.7 * t) + phase)


def _strobe(u, v, t, phase):  # fear: whole frame flashes on/off at 5 Hz, dark vignette
    on = float(np.sin(2 * np.pi * 5 * t + phase) > 0)
    vignette = 1 - np.clip(2 * np.hypot(u - 0.5, v - 0.5), 0, 1)
    return (0.2 + 0.8 * on) * vignette


def _bouncing_blob(u, v, t, phase):  # joy: bright blob circling the frame
    cx = 0.5 + 0.3 * np.cos(2 * np.pi * 0.6 * t + phase)
    cy = 0.5 + 0.3 * np.sin(2 * np.pi * 0.6 * t + phase)
    return np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * 0.12**2))


def _flat(u, v, t, phase):  # neutral: nothing moves
    return np.full_like(u, NEUTRAL_PATTERN_LEVEL)


def _vertical_stripes_slow_left(u, v, t, phase):  # sadness: slow drift
    return _wave(2 * np.pi * (3 * u + 0.3 * t) + phase)


def _expanding_rings(u, v, t, phase):  # surprise: rings bursting outwards
    return _wave(2 * np.pi * (6 * np.hypot(u - 0.5, v - 0.5) - 1.5 * t) + phase)


_PATTERNS = {
    "anger": _horizontal_stripes_fast_down,
    "disgust": _diagonal_stripes,
    "fear": _strobe,
    "joy": _bouncing_blob,
    "neutral": _flat,
    "sadness": _vertical_stripes_slow_left,
    "surprise": _expanding_rings,
}
assert set(_PATTERNS) == set(EMOTIONS)

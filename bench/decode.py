"""Decoding throughput: clips per second to build a clip's video AND audio model inputs.

Compared, in the same run and on the same files:

* emosent: `emosent.data.media.load_clip`. It demuxes the packets once to learn every frame's
  timestamp and which frames are keyframes, picks 16 frames (`pick_frames`: one per equal bin of
  the clip, the fewest frames to decode, then the nearest the bins' centres), then decodes only
  the groups of pictures (GOPs) that hold a pick, each from its keyframe up to its last pick,
  the GOPs shared out over the cores, unwanted non-reference frames (B-frames) skipped, and
  converts only the 16 picks to RGB. Its frame-index cache is cleared before every load, so
  each load pays the demux, as a training epoch over many files does.
* naive: what a plain OpenCV loop (`while cap.read(): ...`) does: decode EVERY video frame and
  convert each one to an RGB array, then keep the 16 it needs. It picks them with emosent's own
  rule (`pick_frames`, fed the decoded frames' keyframe flags) and keeps only the candidates (bin
  centres, bin starts and keyframes) rather than a list of every frame, a slightly kinder baseline. Its
  transforms and audio path are emosent's own too (`transform_frames`, `read_audio`, `log_mel`),
  so the two differ only in how they reach the frames.

Before timing, every file is read by both pipelines and the video and audio tensors are asserted
equal, so the comparison is between two ways of computing the same thing.

Cases: the train clips of `make_sample` (1-4 s, up to 320x240; libx264's default keyframe
interval is longer than a clip, so each is one GOP), and a generated 60 s 640x360 25 fps
H.264 + AAC clip (a panning texture, a moving disc and grain, so the encoder writes real
P-frames) at two keyframe intervals. The interval decides what seeking can save: a pick costs
the decoding of its GOP from the keyframe up to it, one frame when it is a keyframe. With gop=25
(1 s, typical of phone/camera recordings and streaming encodes) every bin of the 60 s clip holds
keyframes; with libx264's default (250 frames = 10 s) most bins hold none, and their GOPs must be
decoded up to the GOP's last pick. The table gives how many frames each pipeline decodes.

`write_clip` encodes with x264's `ultrafast` preset by default: no B-frames, CAVLC, no
deblocking, so every frame is a reference frame and cheap to decode. The last case is written
with x264's defaults throughout (preset medium: B-frames, CABAC, deblocking, a keyframe every 250
frames), what `ffmpeg -i in.mov out.mp4` writes and most web video resembles.

Run: .venv/bin/python bench/decode.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch

from emosent.data.media import (
    DEFAULT,
    demux_index,
    frame_index,
    gop_groups,
    load_clip,
    log_mel,
    pick_frames,
    read_audio,
    transform_frames,
)
from emosent.synthetic import MELD_SPLITS, make_sample, write_clip

import machine

NUM_FRAMES = DEFAULT.num_frames  # the design's processor settings
SAMPLE_PER_CLASS = 3  # make_sample's train split: 7 emotions x 3 = 21 clips
SAMPLE_SEED = 0

LONG_DURATION_S = 60.0
LONG_WIDTH_PX, LONG_HEIGHT_PX = 640, 360
LONG_FPS = 25
# (keyframe interval, x264 preset): a keyframe every 1 s; every 10 s, libx264's default (written
# explicitly); and x264's defaults throughout (preset medium: B-frames, CABAC, deblocking), what
# `ffmpeg -i in out.mp4` writes
LONG_CASES = ((25, "ultrafast"), (250, "ultrafast"), (250, "medium"))
X264_DEFAULT_GOP_FRAMES = 250  # for the case label

PAN_PX_PER_S = 50  # the texture scrolls left at 2 px per frame
TEXTURE_CELL_PX = 8  # the texture is random cells of this size, blurred: edges but not pure noise
DISC_RADIUS_PX = 40
DISC_ORBIT_S = 4.0  # the disc goes round the frame once in this time
GRAIN_STD = 4.0  # 8-bit levels, changes every frame (from a pool of precomputed grains)
GRAIN_POOL = 7
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.3
AUDIO_NOISE_STD = 0.02

REPEATS = 5  # timed passes per case; the median is reported
QUICK_REPEATS = 2

VideoAudio = tuple[torch.Tensor, torch.Tensor]


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed run still removes its media
    repeats = QUICK_REPEATS if args.quick else REPEATS
    print(f"machine: {machine.describe()}\nPyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})")
    print(f"repeats: {repeats} (median reported)\n")
    cpu_before = cpu_snapshot()
    log_mel(np.zeros(16_000, np.float32))  # librosa/numba compile here, not inside a timing
    with tempfile.TemporaryDirectory(prefix="emosent-bench-") as tmp:
        cases = make_cases(Path(tmp))
        rows = [measure_case(name, paths, repeats) for name, paths in cases]
    print_table(rows)
    print(f"\n{contention_note(cpu_before)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repetitions instead of {REPEATS}")
    return parser.parse_args()


def cpu_snapshot() -> tuple[float | None, float, float]:
    """(CPU-s spent by all processes or None off Linux, CPU-s spent by this one, wall clock)."""
    fields = read_text("/proc/stat").split("\n", 1)[0].split()[1:]
    busy = None
    if len(fields) >= 8:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy, own.user + own.system, time.perf_counter()


def contention_note(before: tuple[float | None, float, float]) -> str:
    """How much CPU other processes took while the benchmark ran: timings on a shared machine drift."""
    after = cpu_snapshot()
    wall_s = after[2] - before[2]
    if before[0] is None or after[0] is None:
        return f"took {wall_s:.0f} s"
    others_s = (after[0] - before[0]) - (after[1] - before[1])
    return f"took {wall_s:.0f} s, during which other processes used {others_s:.0f} CPU-s (near 0: a quiet machine)"


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- the media ------------------------------------------------------------------------------


def make_cases(tmp: Path) -> list[tuple[str, list[Path]]]:
    print("generating media ...", flush=True)
    sample_dir = make_sample(tmp / "sample", n_per_class=SAMPLE_PER_CLASS, seed=SAMPLE_SEED)
    train_clips = sorted((sample_dir / MELD_SPLITS["train"][1]).glob("*.mp4"))
    cases = [(f"make_sample train ({len(train_clips)} clips, 1-4 s)", train_clips)]
    for gop, preset in LONG_CASES:
        label = f"gop={gop}" + (" (x264's default, 10 s)" if gop == X264_DEFAULT_GOP_FRAMES else "")
        path = write_long_clip(tmp / f"long_gop{gop}_{preset}.mp4", gop, preset)
        cases.append((f"60 s 640x360 25 fps, {label}, {preset}", [path]))
    return cases


def write_long_clip(path: Path, gop: int | None, preset: str = "ultrafast") -> Path:
    return write_clip(
        path,
        duration_s=LONG_DURATION_S,
        fps=LONG_FPS,
        width=LONG_WIDTH_PX,
        height=LONG_HEIGHT_PX,
        frame_fn=moving_scene(LONG_WIDTH_PX, LONG_HEIGHT_PX, np.random.default_rng(SAMPLE_SEED)),
        audio_fn=tone_with_noise,
        gop=gop,
        preset=preset,
    )


def moving_scene(width: int, height: int, rng: np.random.Generator) -> Callable[[int, float], np.ndarray]:
    """frame_fn for write_clip: a panning texture, a disc orbiting over it, and fresh grain."""
    pan_px = int(PAN_PX_PER_S * LONG_DURATION_S) + 1
    texture = blurred_cells(height, width + pan_px, rng)  # (H, W + pan, 3) float32
    grains = rng.normal(0, GRAIN_STD, (GRAIN_POOL, height, width, 1)).astype(np.float32)
    yy, xx = np.mgrid[:height, :width]
    disc_colour = np.array([230, 60, 40], np.float32)

    def frame_fn(i: int, t_s: float) -> np.ndarray:
        x0 = int(PAN_PX_PER_S * t_s)
        frame = texture[:, x0 : x0 + width] + grains[i % GRAIN_POOL]
        angle = 2 * np.pi * t_s / DISC_ORBIT_S
        cx, cy = width / 2 + 0.35 * width * np.cos(angle), height / 2 + 0.3 * height * np.sin(angle)
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < DISC_RADIUS_PX**2] = disc_colour
        return np.clip(frame, 0, 255).astype(np.uint8)

    return frame_fn


def blurred_cells(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Random colour cells upsampled and box-blurred: textured like a scene, not white noise."""
    cells = rng.uniform(30, 225, (height // TEXTURE_CELL_PX + 1, width // TEXTURE_CELL_PX + 1, 3))
    image = np.repeat(np.repeat(cells, TEXTURE_CELL_PX, axis=0), TEXTURE_CELL_PX, axis=1)[:height, :width]
    blurred = image.copy()
    for axis in (0, 1):
        blurred = (np.roll(blurred, -2, axis) + np.roll(blurred, -1, axis) + blurred
                   + np.roll(blurred, 1, axis) + np.roll(blurred, 2, axis)) / 5  # fmt: skip
    return blurred.astype(np.float32)


def tone_with_noise(t: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(SAMPLE_SEED).normal(0, AUDIO_NOISE_STD, t.shape)
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t) + noise).astype(np.float32)


# --- the two pipelines ----------------------------------------------------------------------


def emosent_load(path: Path) -> VideoAudio:
    demux_index.cache_clear()  # time the uncached path: a training epoch reads each file once
    clip = load_clip(path)
    return clip.video, clip.audio


def naive_load(path: Path) -> VideoAudio:
    """Decode and convert every frame to RGB, keep emosent's 16 picks; the same audio path."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # threaded decoding, as load_clip (and OpenCV's FFmpeg backend) decode
        edges = np.arange(NUM_FRAMES + 1) * stream.frames / NUM_FRAMES  # bins, from the header's count
        kept = set(edges.astype(int).tolist()) | set(((edges[:-1] + edges[1:]) / 2).astype(int).tolist())
        candidates, is_keyframe = {}, []
        for i, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")  # paid for every frame, as cap.read() does
            is_keyframe.append(frame.key_frame)
            if frame.key_frame or i in kept:
                candidates[i] = rgb
        picks = pick_frames(is_keyframe, NUM_FRAMES)
        video = transform_frames(np.stack([candidates[i] for i in picks]))
        audio = log_mel(read_audio(container, None, None))
    return video, audio


def frames_decoded(path: Path) -> tuple[int, int]:
    """(frames load_clip decodes: per GOP holding a pick, its frames from the keyframe up to its
    last pick that are picks or reference frames; frames the naive loop decodes: all of them)."""
    index = frame_index(path)
    is_keyframe = [key for _, key in index]
    picks = pick_frames(is_keyframe, NUM_FRAMES).tolist()
    with av.open(str(path)) as container:  # the decoder outputs only reference frames when told to skip the rest
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        is_reference = {frame.pts for frame in container.decode(stream)}
    decoded = 0
    for start, group in gop_groups(np.flatnonzero(is_keyframe), picks).items():
        decoded += sum(i in group or index[i][0] in is_reference for i in range(start, group[-1] + 1))
    return decoded, len(index)


def audio_only(path: Path) -> None:
    load_clip(path, modalities=("audio",))


# --- measuring ------------------------------------------------------------------------------


def measure_case(name: str, paths: list[Path], repeats: int) -> dict:
    print(f"measuring: {name}", flush=True)
    check_same_inputs(paths)  # also warms up both pipelines on these files
    loads = {"emosent": emosent_load, "naive": naive_load, "audio": audio_only}
    seconds = median_pass_seconds(loads, paths, repeats)
    decoded = [frames_decoded(path) for path in paths]
    return {
        "case": name,
        "decoded": tuple(sum(counts) for counts in zip(*decoded)),
        "emosent": len(paths) / seconds["emosent"],
        "naive": len(paths) / seconds["naive"],
        "audio_ms": 1000 * seconds["audio"] / len(paths),
    }


def check_same_inputs(paths: list[Path]) -> None:
    for path in paths:
        (video, audio), (naive_video, naive_audio) = emosent_load(path), naive_load(path)
        assert video.shape == (NUM_FRAMES, 3, DEFAULT.frame_size, DEFAULT.frame_size), video.shape
        assert torch.equal(video, naive_video), f"{path.name}: the two pipelines picked different frames"
        assert torch.equal(audio, naive_audio), f"{path.name}: audio differs"


def median_pass_seconds(
    loads: dict[str, Callable[[Path], object]], paths: list[Path], repeats: int
) -> dict[str, float]:
    """Median wall time of one pass over `paths` for each loader. The loaders take turns within
    each repetition, so a burst of load from another process hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in loads}
    for _ in range(repeats):
        for name, load in loads.items():
            start = time.perf_counter()
            for path in paths:
                load(path)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def print_table(rows: list[dict]) -> None:
    header = ("case", "emosent clips/s", "naive clips/s", "ratio", "frames decoded: emosent / naive")
    lines = [
        (
            r["case"],
            f"{r['emosent']:.2f}",
            f"{r['naive']:.2f}",
            f"{r['emosent'] / r['naive']:.1f}x",
            "{} / {}".format(*r["decoded"]),
        )
        for r in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    print()
    for cells in (header, tuple("-" * w for w in widths), *lines):
        print(" | ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    print("\naudio decode + log-mel alone (paid by both pipelines), ms per clip:")
    for r in rows:
        print(f"  {r['case']}: {r['audio_ms']:.1f}")


if __name__ == "__main__":
    sys.exit(main())

"""`emosent predict` throughput, and the real-time factor of `analyze` with the default model.

    .venv/bin/python bench/predict.py [--videos 4] [--duration-s 30] [--repeats 2] [--baseline-src DIR]

Model: the compute of the built-in default, `minilm` with its top 2 layers fine-tuned + the face
encoder (MTCNN + FER2013) + Whisper-base, with random heads (seed 0): the cost is the same.
Videos: generated 640x360 25 fps H.264 + AAC with x264's default keyframe interval (250 frames,
10 s), a real face (scikit-image's astronaut) moving over a drifting background, a speech-like
tone, and SRT subtitles beside each (one 2.8 s cue every 3 s).

1. RTF of `analyze` (60 s video, 20 segments, batch 8, the model loaded before timing), run
   in fresh processes that alternate between this checkout and `--baseline-src` (a `src` folder
   of another commit, e.g. from `git archive`), so both see the same load: wall-clock and CPU
   seconds per second of video, and the largest difference between the two in any probability.
   `--builtin` times the built-in model as shipped (emosent.builtin) instead of the default
   compute model. `--speakers` adds a third kind of run, this checkout with diarisation (emosent.speakers.diarise
   on the segments before predict_segments, as analyze does; its first call, which loads the voice
   encoder, inside the timing), and the ratio of its time to the run without.
2. Clips per second and RTF over `--videos` videos: `analyze` one video at a time (one process,
   the model loaded once), then `emosent predict` with 1 process and with 2 (DDP, gloo), each
   a fresh command (its start-up, about the model's loading, included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

import machine
from decode import cpu_snapshot

WIDTH, HEIGHT, FPS = 640, 360, 25
RTF_DURATION_S, SEGMENT_S = 60.0, 3.0
FACE_PX = 200


def default_compute_model():
    import torch

    from emosent import EmotionSentimentModel, ModelConfig

    torch.manual_seed(0)
    return EmotionSentimentModel(ModelConfig(text_encoder="minilm", video_encoder="face", audio_encoder="whisper-base",
                                             finetune_text_layers=2)).eval()


def write_talk(path: Path, duration_s: float, seed: int = 0) -> Path:
    """A video with a face moving over a drifting background, and SRT cues beside it."""
    import srt
    from PIL import Image
    from skimage.data import astronaut

    from emosent.synthetic import write_clip

    face = np.asarray(Image.fromarray(astronaut()[0:250, 120:370]).resize((FACE_PX, FACE_PX)))
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None, None]

    def frame(i: int, t: float) -> np.ndarray:
        f = np.concatenate([(x + 0.1 * t + seed / 7) % 1 + 0 * y, (y + 0.05 * t) % 1 + 0 * x, 0.5 + 0 * x * y], -1)
        f = (f * 255).astype(np.uint8)
        left = int(200 + 150 * np.sin(t / 3 + seed))
        f[80:80 + FACE_PX, left:left + FACE_PX] = face
        return f

    def speech(t: np.ndarray) -> np.ndarray:
        return (0.3 * np.sin(2 * np.pi * (180 + 20 * seed + 40 * np.sin(np.pi * t)) * t) * (0.6 + 0.4 * np.sin(6 * np.pi * t))).astype(np.float32)

    write_clip(path, duration_s=duration_s, fps=FPS, width=WIDTH, height=HEIGHT, frame_fn=frame, audio_fn=speech, gop=250)
    lines = ("I can't believe you did that", "This is the best day ever", "Well, I guess that's fine", "Oh no, what happened")
    cues = [srt.Subtitle(k + 1, timedelta(seconds=k * SEGMENT_S + 0.1), timedelta(seconds=(k + 1) * SEGMENT_S - 0.1), lines[k % 4])
            for k in range(int(duration_s // SEGMENT_S))]
    path.with_suffix(".srt").write_text(srt.compose(cues))
    return path


# --- 1. analyze's RTF, this checkout against a baseline --------------------------------------


def rtf_worker(video: Path, speakers: bool = False, builtin: bool = False) -> None:
    """Runs inside a fresh process (PYTHONPATH picks the code): prints one JSON line."""
    import torch

    from emosent.analyze import Timer, check_segments, predict_segments
    from emosent.segments import read_segments

    if builtin:
        from emosent.builtin import load_model

        model = load_model(None).eval()
    else:
        model = default_compute_model()
    segments, _ = check_segments(read_segments(video.with_suffix(".srt")), RTF_DURATION_S, True, [])
    cpu = torch.device("cpu")
    predict_segments(model, video, segments[:8], 8, cpu, Timer(), [])  # warm-up: numba, allocator
    wall, own = time.perf_counter(), time.process_time()
    timer = Timer()
    if speakers:
        from emosent.speakers import diarise

        segments = timer.run("speakers", diarise, video, segments)
    probs = predict_segments(model, video, segments, 8, cpu, timer, [])
    wall, own = time.perf_counter() - wall, time.process_time() - own
    print(json.dumps({"wall_s": wall, "cpu_s": own, "stages": timer.seconds, "top": [top_of(p) for p in probs]}))


def top_of(result) -> list:
    """[top emotion, its probability, top sentiment, its probability] of one segment, from either
    shape predict_segments has returned: (emotion probs, sentiment probs, face share) before
    issue 15, a dict of top-3 labels after it."""
    from emosent.labels import EMOTIONS, SENTIMENTS

    if isinstance(result, dict):
        e, s = result["emotions"][0], result["sentiments"][0]
        return [EMOTIONS.index(e["label"]), e["confidence"], SENTIMENTS.index(s["label"]), s["confidence"]]
    p_e, p_s, _ = result
    return [int(p_e.argmax()), round(float(p_e.max()), 4), int(p_s.argmax()), round(float(p_s.max()), 4)]


def compare_rtf(video: Path, baseline_src: Path | None, repeats: int, speakers: bool = False, builtin: bool = False) -> None:
    here = Path(__file__).resolve().parents[1] / "src"
    model = ["--rtf-builtin"] if builtin else []
    sources = {"this checkout": (here, model)} | ({"baseline": (baseline_src.resolve(), model)} if baseline_src else {})
    sources |= {"this checkout, with speakers": (here, ["--rtf-speakers", *model])} if speakers else {}
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for _ in range(repeats):
        for name, (src, extra) in sources.items():  # alternating: a burst of load from others hits all alike
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run([sys.executable, __file__, "--rtf-worker", str(video), *extra], env=env, capture_output=True,
                                 text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\n1. analyze, {'the built-in model' if builtin else 'the default compute model'}, {RTF_DURATION_S:.0f} s video, "
          f"{int(RTF_DURATION_S // SEGMENT_S)} segments, batch 8; "
          f"median of {repeats} fresh processes each")
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        best = min(rs, key=lambda r: r["wall_s"])
        stages = ", ".join(f"{k} {v:.2f}" for k, v in best["stages"].items())
        runs_s = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        print(f"   {name}: RTF {wall / RTF_DURATION_S:.3f} wall ({wall:.1f} s), {cpu / RTF_DURATION_S:.3f} CPU-s per s "
              f"(runs: {runs_s} s); stages of the fastest, s: {stages}")
    if speakers:
        with_, without = (statistics.median(r["wall_s"] for r in runs[k]) for k in ("this checkout, with speakers", "this checkout"))
        cpu_with, cpu_without = (statistics.median(r["cpu_s"] for r in runs[k]) for k in ("this checkout, with speakers", "this checkout"))
        print(f"   with speakers / without: {with_ / without:.3f}x wall, {cpu_with / cpu_without:.3f}x CPU time (target <= 1.15x)")
    if baseline_src:
        a, b = (np.array(runs[name][0]["top"]) for name in ("this checkout", "baseline"))  # (segments, 4): label, p, label, p
        ratio = statistics.median(r["wall_s"] for r in runs["baseline"]) / statistics.median(r["wall_s"] for r in runs["this checkout"])
        cpu_ratio = statistics.median(r["cpu_s"] for r in runs["baseline"]) / statistics.median(r["cpu_s"] for r in runs["this checkout"])
        print(f"   speed-up: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time; largest difference of a top probability "
              f"{np.abs(a[:, [1, 3]] - b[:, [1, 3]]).max():.2e} (4 decimals); top emotion equal in "
              f"{int((a[:, 0] == b[:, 0]).sum())}/{len(a)}, top sentiment in {int((a[:, 2] == b[:, 2]).sum())}/{len(a)}")


# --- 2. predict over many videos ------------------------------------------------------------


def throughput(folder: Path, tmp: Path, n_videos: int, duration_s: float, workers: int) -> None:
    from emosent.analyze import analyze

    model = default_compute_model()
    model_dir = model.save_pretrained(tmp / "model")
    videos = sorted(folder.glob("*.mp4"))
    per_video = int(duration_s // SEGMENT_S)  # one shard per video: 2 processes then share the work
    clips = n_videos * per_video
    seconds = n_videos * duration_s
    analyze(videos[0], model, subtitles=videos[0].with_suffix(".srt"), device="cpu")  # warm-up
    start = time.perf_counter()
    for video in videos:
        analyze(video, model, subtitles=video.with_suffix(".srt"), device="cpu")
    rows = [("analyze, one video at a time (model loaded once, not timed)", time.perf_counter() - start)]
    from emosent.predict import predict

    for w in sorted({0, workers}):
        start = time.perf_counter()
        predict(folder, tmp / f"in-process-{w}.jsonl", model, num_workers=w, shard_rows=per_video,
                trainer_kwargs={"accelerator": "cpu", "devices": 1})
        rows.append((f"predict(), 1 process, num_workers={w} (model loaded once, not timed)", time.perf_counter() - start))
    for devices in (1, 2):
        out = tmp / f"predictions-{devices}.jsonl"
        command = [sys.executable, "-m", "emosent", "predict", "--data", str(folder), "--out", str(out), "--model", str(model_dir),
                   "--accelerator", "cpu", "--devices", str(devices), "--num-workers", str(workers), "--shard-rows", str(per_video),
                   *(["--strategy", "ddp"] if devices > 1 else [])]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append((f"emosent predict, {devices} process{'es' if devices > 1 else ''}, --num-workers {workers} "
                     "(a fresh command: start-up and model loading included)", time.perf_counter() - start))
    print(f"\n2. {n_videos} videos x {duration_s:.0f} s = {clips} clips, {seconds:.0f} s of video")
    for name, wall in rows:
        print(f"   {name}: {wall:.1f} s, {clips / wall:.2f} clips/s, RTF {wall / seconds:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--baseline-src", type=Path, default=None, help="a src/ folder of the commit to compare analyze with")
    parser.add_argument("--only", choices=("rtf", "throughput"), default=None)
    parser.add_argument("--speakers", action="store_true", help="also time analyze with diarisation (see 1. above)")
    parser.add_argument("--builtin", action="store_true", help="time analyze with the built-in model as shipped (emosent.builtin) "
                        "rather than the default compute model with random heads")
    parser.add_argument("--rtf-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rtf-builtin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rtf-speakers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rtf_worker:
        return rtf_worker(args.rtf_worker, args.rtf_speakers, args.rtf_builtin)
    import lightning.pytorch  # noqa: F401  (its logging handler, which quiet_libraries filters)

    from emosent.cli import quiet_libraries

    quiet_libraries()
    print(f"machine: {machine.describe('cpu')}; load average before: {os.getloadavg()[0]:.1f}")
    before, children = cpu_snapshot(), children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="emosent-bench-") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "rtf"):
            compare_rtf(write_talk(tmp / "talk.mp4", RTF_DURATION_S), args.baseline_src, args.repeats, args.speakers, args.builtin)
        if args.only in (None, "throughput"):
            folder = tmp / "videos"
            folder.mkdir()
            for k in range(args.videos):
                write_talk(folder / f"talk{k}.mp4", args.duration_s, seed=k)
            throughput(folder, tmp, args.videos, args.duration_s, args.num_workers)
    after = cpu_snapshot()
    others = (after[0] - before[0]) - (after[1] - before[1]) - (children_cpu_s() - children)
    print(f"\ntook {after[2] - before[2]:.0f} s, during which processes other than this benchmark's used {others:.0f} CPU-s "
          f"of the {len(os.sched_getaffinity(0)) * (after[2] - before[2]):.0f} its cores had (near 0: a quiet machine)")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished child processes (the measured commands)."""
    t = os.times()
    return t.children_user + t.children_system


if __name__ == "__main__":
    main()

"""Load on `emosent serve`: N concurrent clients on loopback submit and poll jobs on a real server,
beside `analyze()` called directly in the same run on the same clip and model.

    .venv/bin/python bench/serve.py [--clients 4] [--jobs 8] [--workers 1] [--model DIR] [--timeout-s 900]

The clip: 10 s of 320x240 H.264 + AAC with 5 subtitle segments; the model: the offline minilm
text encoder, R3D-18 (random weights: the speed is that of the real network) and the audio CNN,
or --model. Reported: throughput (jobs/s), latency from the first byte sent to the poll that sees
`done` (p50/p95; polls every 0.1 s), the overhead ratio (the service's seconds per job over
analyze()'s), the service's own seconds per job (its seconds per job less the analyze() time its
results report: uploads, probing, SQLite, result files, polling), and peak memory (VmHWM) of the
server and of this process.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline encoders only, before transformers is imported

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import srt
import torch
from transformers.utils import logging as transformers_logging

from emosent import EmotionSentimentModel, ModelConfig
from emosent.analyze import analyze
from emosent.synthetic import write_clip

import machine

DURATION_S, SEGMENTS, WIDTH, HEIGHT, FPS = 10.0, 5, 320, 240, 25
POLL_S = 0.1


def write_inputs(folder: Path) -> tuple[Path, Path]:
    video = write_clip(folder / "talk.mp4", duration_s=DURATION_S, fps=FPS, width=WIDTH, height=HEIGHT,
                       frame_fn=lambda i, t: np.full((HEIGHT, WIDTH, 3), (8 * i) % 256, np.uint8),
                       audio_fn=lambda t: (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), gop=2 * FPS)
    step = DURATION_S / SEGMENTS
    cues = [srt.Subtitle(k + 1, timedelta(seconds=k * step + 0.1), timedelta(seconds=(k + 1) * step - 0.1),
                         f"utterance number {k + 1}, said with feeling") for k in range(SEGMENTS)]
    subtitles = folder / "talk.srt"
    subtitles.write_text(srt.compose(cues))
    return video, subtitles


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model_dir: Path, data_dir: Path, workers: int, queue_size: int, timeout_s: float):
    process = subprocess.Popen([sys.executable, "-m", "emosent", "serve", "--model", str(model_dir), "--port", "0",
                                "--data-dir", str(data_dir), "--workers", str(workers), "--queue-size", str(queue_size)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()  # "emosent serve: listening on http://127.0.0.1:PORT/ ..."
    if "listening on " not in line:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    url = line.split("listening on ", 1)[1].split("/ ", 1)[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server was not ready in time")


def one_job(client: httpx.Client, video: Path, subtitles: Path, deadline: float) -> tuple[float, dict]:
    """Submit (again after Retry-After if the queue is full), poll until done: (latency s, job)."""
    started = time.perf_counter()
    while True:
        answer = client.post("/v1/analyses", files={"video": (video.name, video.read_bytes()),
                                                    "subtitles": (subtitles.name, subtitles.read_bytes())})
        if answer.status_code != 503:
            break
        time.sleep(float(answer.headers["retry-after"]))
    job_id = answer.raise_for_status().json()["id"]
    while time.monotonic() < deadline:
        job = client.get(f"/v1/analyses/{job_id}").json()
        if job["status"] in ("done", "failed"):
            if job["status"] == "failed":
                raise SystemExit(f"job failed: {job['error']}")
            client.delete(f"/v1/analyses/{job_id}")
            return time.perf_counter() - started, job
        time.sleep(POLL_S)
    raise SystemExit("--timeout-s reached")


def load(url: str, clients: int, jobs: int, video: Path, subtitles: Path, deadline: float) -> tuple[float, list[float], list[dict]]:
    """`clients` threads share `jobs` submissions; returns (wall s, latencies, finished jobs)."""
    left = iter(range(jobs))
    lock = threading.Lock()
    latencies, finished = [], []

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    if next(left, None) is None:
                        return
                latency, job = one_job(client, video, subtitles, deadline)
                with lock:
                    latencies.append(latency)
                    finished.append(job)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, finished


def stages(timings: list[dict]) -> str:
    return ", ".join(f"{k} {statistics.mean(t[k] for t in timings):.2f} s" for k in timings[0])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8, help="jobs through the service, and direct analyze() calls")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: minilm + R3D-18 + audio CNN)")
    parser.add_argument("--timeout-s", type=float, default=900)
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    deadline = time.monotonic() + args.timeout_s
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video, subtitles = write_inputs(tmp)
        described = "minilm + R3D-18 + audio CNN" if args.model is None else str(args.model)
        if args.model is None:
            torch.manual_seed(0)
            args.model = EmotionSentimentModel(ModelConfig(text_encoder="minilm", video_weights="none")).save_pretrained(tmp / "model")
        model = EmotionSentimentModel.from_pretrained(args.model)

        run = lambda: analyze(video, model, subtitles=subtitles)
        run()  # warm-up: librosa's numba compilation, the allocator
        before = [run() for _ in range(args.jobs // 2)]  # half before the load, half after: the host drifts

        process, url = start_server(args.model, tmp / "data", args.workers, queue_size=2 * args.clients,
                                    timeout_s=deadline - time.monotonic())
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                one_job(client, video, subtitles, deadline)  # the same warm-up in the server
            wall, latencies, jobs = load(url, args.clients, args.jobs, video, subtitles, deadline)
            server_rss = peak_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(60)
        after = [run() for _ in range(args.jobs - args.jobs // 2)]
        direct_rss = peak_rss_mb()

    in_server = statistics.mean(j["result"]["elapsed_s"] for j in jobs)  # analyze() itself, inside the service
    direct = statistics.mean(r["elapsed_s"] for r in before + after)
    print(f"machine: {machine.describe('cpu')}")
    print(f"clip: {DURATION_S:.0f} s {WIDTH}x{HEIGHT} {FPS} fps H.264 + AAC, {SEGMENTS} subtitle segments; model: {described}")
    print(f"analyze() directly, one after another: {direct:.2f} s per job ({1 / direct:.3f} jobs/s; "
          f"{statistics.mean(r['elapsed_s'] for r in before):.2f} s before the load, "
          f"{statistics.mean(r['elapsed_s'] for r in after):.2f} s after); stages {stages([r['timing_s'] for r in before + after])}")
    print(f"service, {args.clients} clients, {args.workers} worker(s), {args.jobs} jobs: {args.jobs / wall:.3f} jobs/s "
          f"({wall / args.jobs:.2f} s per job); latency p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s")
    print(f"  analyze() inside the server: {in_server:.2f} s per job, stages {stages([j['result']['timing_s'] for j in jobs])}; "
          f"the service's own time per job (s/job - analyze() inside): {wall / args.jobs - in_server:.3f} s")
    print(f"overhead ratio (service s/job over direct s/job): {wall / args.jobs / direct:.3f}")
    print(f"peak RSS: server {server_rss:.0f} MB, this process (model loaded, direct calls) {direct_rss:.0f} MB")


if __name__ == "__main__":
    main()

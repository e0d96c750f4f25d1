"""A real `emosent serve` in a subprocess for the service tests: loopback, a free port (--port 0),
its output in a log file that failures show."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from emosent import EmotionSentimentModel, ModelConfig
from emosent.synthetic import write_clip

SRT = ("1\n00:00:00,000 --> 00:00:00,900\nI am so furious about this\n\n"
       "2\n00:00:01,000 --> 00:00:01,900\nWhat a wonderful surprise\n")
START_TIMEOUT_S = 180  # torch and transformers imports on a busy 2-core machine


def tiny_model(folder: Path) -> Path:
    """The random test model (2-layer BERT of width 32, random R3D-18, the audio CNN): all three
    modalities, as a trained model folder has them."""
    torch.manual_seed(0)
    return EmotionSentimentModel(ModelConfig(text_encoder="tiny", video_weights="none")).save_pretrained(folder)


def talk(folder: Path, duration_s: float = 2.0, cues: int = 0) -> tuple[Path, Path]:
    """A small clip (frames that change, a tone) and its subtitles: SRT above, or `cues` even ones."""
    folder.mkdir(parents=True, exist_ok=True)
    video = write_clip(folder / "talk.mp4", duration_s=duration_s, fps=25, width=160, height=120,
                       frame_fn=lambda i, t: np.full((120, 160, 3), (8 * i) % 256, np.uint8),
                       audio_fn=lambda t: (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    text = SRT
    if cues:
        step = duration_s / cues
        text = "".join(f"{k + 1}\n{stamp(k * step)} --> {stamp((k + 1) * step - 0.05)}\nline number {k + 1}\n\n"
                       for k in range(cues))
    subtitles = folder / "talk.srt"
    subtitles.write_text(text)
    return video, subtitles


def stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


class Server:
    """`python -m emosent serve ARGS` with --port 0; `url` once it is ready."""

    def __init__(self, model_dir: Path, data_dir: Path, *args: str, env: dict | None = None):
        self.args = ["--model", str(model_dir), "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0", *args]
        self.data_dir, self.env = data_dir, {**os.environ, **(env or {})}
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log_from = 0  # where this start's output begins (a restart appends to the same log)

    def start(self) -> Server:
        self.url, self.log_from = "", self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "emosent", "serve", *self.args], stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            if not self.url and (found := re.findall(r"listening on (http://\S+?)/ ", self.output())):
                self.url = found[-1]
            if self.url and self.ready():
                return self
            time.sleep(0.2)
        self.kill()  # never leave a server behind a failed test
        raise AssertionError(f"the server was not ready in {START_TIMEOUT_S} s:\n{self.output()}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        with open(self.log, "rb") as log:
            log.seek(self.log_from)
            return log.read().decode(errors="replace")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to tidy up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def leftovers(self) -> list[str]:
        """Files in the uploads folder (there should be none between requests)."""
        return sorted(str(p.relative_to(self.data_dir)) for p in (self.data_dir / "uploads").rglob("*"))


def wait_for(client: httpx.Client, job_id: str, states=("done", "failed"), timeout_s: float = 120, until=None) -> dict:
    """Poll a job until its status is in `states` (and `until(job)` holds, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/analyses/{job_id}").raise_for_status().json()
        if job["status"] in states and (until is None or until(job)):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout_s} s: {job}")


def files(video: Path, subtitles: Path | None = None, field: str = "subtitles") -> dict:
    out = {"video": (video.name, video.read_bytes(), "video/mp4")}
    if subtitles is not None:
        out[field] = (subtitles.name, subtitles.read_bytes(), "application/octet-stream")
    return out

"""Shared fixtures: tiny offline models and inputs with the design's shapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
B, T, L, F = 2, 16, 12, 300


def random_batch(b: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, 2000, (b, L), generator=g),
        "attention_mask": torch.ones(b, L, dtype=torch.long),
        "video": torch.randn(b, T, 3, 112, 112, generator=g),
        "audio": torch.randn(b, 1, 64, F, generator=g),
    }


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path} (see ../shared/data/README.md)")
    return path


def solid_frames(width: int, height: int):
    """frame_fn for write_clip: frame i is a flat grey of level (8 * i) % 256, so a decoded frame
    tells which source frame it was."""
    import numpy as np

    return lambda i, t: np.full((height, width, 3), (8 * i) % 256, np.uint8)


def tone(freq_hz: float = 440.0):
    import numpy as np

    return lambda t: (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Real files for the media pipeline's good and bad cases, written once per session."""
    from emosent.synthetic import write_clip

    d = tmp_path_factory.mktemp("clips")
    out = {
        "normal": write_clip(d / "normal.mp4", duration_s=2.0, fps=25, width=320, height=240,
                             frame_fn=solid_frames(320, 240), audio_fn=tone()),
        "short": write_clip(d / "short.mp4", duration_s=0.2, fps=25, width=160, height=120,
                            frame_fn=solid_frames(160, 120), audio_fn=tone()),
        "no_audio": write_clip(d / "no_audio.mp4", duration_s=1.0, fps=24, width=160, height=120,
                               frame_fn=solid_frames(160, 120)),
        "no_video": write_clip(d / "no_video.mp4", duration_s=1.0, audio_fn=tone()),
        "zero": write_clip(d / "zero.mp4", duration_s=0.0, fps=25, width=160, height=120,
                           frame_fn=solid_frames(160, 120)),
        "long": write_clip(d / "long.mp4", duration_s=300.0, fps=25, width=160, height=120,
                           frame_fn=solid_frames(160, 120), audio_fn=tone(), gop=50),
        "hd": write_clip(d / "hd.mp4", duration_s=1.0, fps=30, width=1920, height=1080,
                         frame_fn=solid_frames(1920, 1080), audio_fn=tone()),
    }
    data = out["normal"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "text.mp4").write_text("this is not a video\n")
    out["truncated"], out["text"], out["missing"] = d / "truncated.mp4", d / "text.mp4", d / "missing.mp4"
    return out


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A make-sample dataset: 2 clips per emotion in train, dev and test (42 clips)."""
    from emosent.synthetic import make_sample

    return make_sample(tmp_path_factory.mktemp("data") / "sample", n_per_class=2, seed=0)


# `python -m emosent ...` costs a new interpreter and its imports (torch, Lightning, transformers:
# seconds each time, most of the suite's CLI tests). run_cli forks each command from a server
# process that imported them once (multiprocessing's forkserver): still a process of its own, with
# its own signal handlers, globals, file descriptors 1 and 2 and exit status, running
# emosent/__main__.py as `python -m` does. Where the environment differs from the one the server
# started with (a test's `env`, or a variable a test set), a module may have read it at import:
# those commands start a fresh interpreter as before.
CLI_PRELOAD = ["torch", "lightning.pytorch", "transformers", "emosent.cli", "emosent.analyze", "emosent.train",
               "emosent.predict", "emosent.evaluate"]
_cli_server: dict = {}


@pytest.fixture(scope="session", autouse=True)
def cli_server():
    """The forkserver run_cli forks commands from, started before any test changes the environment."""
    import multiprocessing
    import multiprocessing.forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(CLI_PRELOAD)
    _cli_server.update(context=context, environ=environment())
    yield
    _cli_server.clear()


def environment() -> dict:
    """os.environ without what pytest itself changes per test (PYTEST_CURRENT_TEST)."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def _cli_child(args: list[str], stdout: str, stderr: str) -> None:
    """In the forked process: fd 1 and 2 to the given files, then `python -m emosent ARGS`."""
    import runpy
    import sys

    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["emosent", *args]
    runpy.run_module("emosent", run_name="__main__", alter_sys=True)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """`python -m emosent ARGS` in a process of its own, as a user runs it; returns the CompletedProcess."""
    import subprocess
    import sys
    import tempfile

    args = [str(a) for a in args]
    if env or not _cli_server or environment() != _cli_server["environ"]:
        return subprocess.run([sys.executable, "-m", "emosent", *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
    with tempfile.TemporaryDirectory(prefix="emosent-cli-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = _cli_server["context"].Process(target=_cli_child, args=(args, out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["emosent", *args], timeout)
        read = lambda path: Path(path).read_text(errors="replace") if os.path.exists(path) else ""  # noqa: E731
        return subprocess.CompletedProcess(["emosent", *args], child.exitcode, read(out), read(err))


def speak(text: str, path: Path, voice: str = "en"):
    """espeak-ng's voice for language `voice` saying `text`: float32 samples in [-1, 1] and the sample rate."""
    import subprocess
    import wave

    import numpy as np

    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as f:
        assert f.getsampwidth() == 2 and f.getnchannels() == 1
        pcm = np.frombuffer(f.readframes(f.getnframes()), np.int16)
        return pcm.astype(np.float32) / 32768, f.getframerate()


def spoken_clip(directory: Path, sentences, lead_s: float, gap_s: float, tail_s: float, frame_fn=None, voice: str = "en"):
    """An mp4 (H.264 video, grey frames unless frame_fn, + AAC audio) in which espeak-ng says
    `sentences` (in language `voice`) with silence before, between and after them: (path, duration in s, each sentence's
    voiced (start, end) in s, first and last sample louder than 1% of full scale). Skips the
    test where espeak-ng is not installed (.ci/run installs it)."""
    import shutil

    import numpy as np

    from emosent.synthetic import write_clip

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does it)")
    voices = [speak(sentence, directory / f"{i}.wav", voice) for i, sentence in enumerate(sentences)]
    rate = voices[0][1]
    chunks, spans = [np.zeros(round(lead_s * rate), np.float32)], []
    for i, (samples, _) in enumerate(voices):
        if i:
            chunks.append(np.zeros(round(gap_s * rate), np.float32))
        offset = sum(map(len, chunks)) / rate
        loud = np.flatnonzero(np.abs(samples) > 0.01)
        spans.append((offset + loud[0] / rate, offset + loud[-1] / rate))
        chunks.append(samples)
    audio = np.concatenate([*chunks, np.zeros(round(tail_s * rate), np.float32)])
    duration = len(audio) / rate
    clip = write_clip(directory / "speech.mp4", duration_s=duration, fps=10, width=160, height=120,
                      frame_fn=frame_fn or solid_frames(160, 120), sample_rate_hz=rate,
                      audio_fn=lambda times: audio[np.minimum((times * rate).astype(int), len(audio) - 1)])
    return clip, duration, spans

"""`emosent --help`, `emosent COMMAND --help` and a bad option answer without loading the heavy
libraries: a module-presence check (how fast that is belongs in bench/startup.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from emosent.cli import build_parser

HEAVY = ("torch", "torchvision", "lightning", "transformers", "av", "librosa", "numpy", "fastapi", "uvicorn",
         "faster_whisper", "safetensors", "huggingface_hub", "matplotlib", "cv2", "PIL")

# `python -m emosent ARGS` as a user runs it, then which heavy modules it loaded
RUN = """
import json, runpy, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["emosent", *json.loads(sys.argv[1])]
try:
    runpy.run_module("emosent", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def commands() -> list[str]:
    return sorted(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


def run(args: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(args), json.dumps(HEAVY)], capture_output=True, text=True, timeout=120)
    return json.loads(done.stderr.splitlines()[-1]), done


def test_every_command_is_covered():
    assert {"train", "analyze", "serve", "predict"} <= set(commands())


@pytest.mark.parametrize("args", [["--help"], *([c, "--help"] for c in commands())], ids=" ".join)
def test_help_loads_no_heavy_library(args):
    result, done = run(args)
    assert result == {"code": 0, "heavy": []}, done.stderr[-2000:]
    assert "usage: emosent" in done.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "--data", "d", "--out", "o", "--epochs", "x"], "argument --epochs: expected a whole number, got 'x'"),
    (["analyze", "v.mp4", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
])
def test_argument_errors_load_no_heavy_library(args, needle):
    result, done = run(args)
    assert result == {"code": 2, "heavy": []}, done.stderr[-2000:]
    assert needle in done.stderr


def test_the_package_is_light_and_its_exports_load_on_use():
    probe = ("import json, sys, emosent; heavy = [m for m in json.loads(sys.argv[1]) if m in sys.modules]; "
             "import emosent.analyze, emosent.train, emosent.export; "  # submodules named like an export must not replace it
             "kinds = {name: type(getattr(emosent, name)).__name__ for name in emosent.__all__}; "
             "print(json.dumps({'heavy': heavy, 'kinds': kinds}))")
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(HEAVY)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert result["kinds"] == {"EMOTIONS": "tuple", "SENTIMENTS": "tuple", "EmotionSentimentModel": "type",
                               "EmotionSentimentOutput": "type", "ModelConfig": "type", "load_model": "function",
                               "analyze": "function", "predict": "function", "train": "function", "evaluate": "function",
                               "extract": "function", "export": "function", "fuse": "function", "adapt": "function",
                               "PretrainedModel": "type", "LateFusionModel": "type"}

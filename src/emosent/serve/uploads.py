"""Multipart uploads streamed straight to the data directory, chunk by chunk, under a size limit.

Each request gets a folder of its own, `uploads/JOB_ID/`, whose files are named by the server
(`video.mp4`, `subtitles.srt`): a client's file name only lends its suffix, and only when the
suffix is short and alphanumeric. Whatever goes wrong (too large, a client that disconnects,
a bad form) removes the folder before the error leaves this module.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

FIELDS = ("video", "subtitles", "transcript")
SUBTITLE_SUFFIXES = (".srt", ".vtt")
# After a refusal the rest of the body is read and dropped, up to this much, so that the client,
# still sending, reads our answer instead of a reset connection.
DRAIN_MAX_BYTES = 16 * 1024 * 1024
UNSHOWN = '"'  # characters left out of a client's file name when it is shown (besides unprintable ones)
FORM_HELP = ("send multipart/form-data with a 'video' file and optionally 'subtitles' (.srt/.vtt) "
             "or 'transcript' (.json)")


class UploadError(Exception):
    """A request the client must change: `status` is the HTTP status, the message says what to do."""

    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail
        super().__init__(detail)


@dataclass
class Upload:
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)  # form field -> file on our disk
    names: dict[str, str] = field(default_factory=dict)  # form field -> the client's file name

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def public(self, message: str) -> str:
        """`message` told with the client's file names instead of our paths."""
        return public(message, {self.files[field]: name for field, name in self.names.items()})


def public(text: str, told: dict[Path, str]) -> str:
    """`text` with each of our upload paths replaced by what the client calls that file: nothing
    the client reads shows the server's folders."""
    for path, name in told.items():
        text = text.replace(str(path), name)
    return text


def display_name(filename: str | None, fallback: str) -> str:
    """The client's file name without any folders, for messages and results only: no control or
    format characters (CR, LF, tab, bidi overrides are not printable) and no double quotes, which
    would end a quoted name in a header, a log line or a CSV field where it is shown."""
    if not filename:
        return fallback
    name = PureWindowsPath(PurePosixPath(filename).name).name  # "C:\\x\\talk.mp4" -> "talk.mp4"
    name = "".join(c for c in name if c.isprintable() and c not in UNSHOWN)[:200].strip()
    return name or fallback


def safe_suffix(filename: str | None) -> str:
    """".mp4" from "My Talk.MP4"; "" for anything but a dot and 1-8 letters or digits."""
    suffix = PurePosixPath(display_name(filename, "")).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def check_form_type(request: Request) -> bytes:
    """The multipart boundary; UploadError 415 for any other body."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(415, f"the request body is {kind.decode('latin-1') or 'untyped'}: {FORM_HELP}")
    return params[b"boundary"]


def check_declared_size(request: Request, max_bytes: int) -> None:
    """413 before reading anything when Content-Length already says too much."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise UploadError(413, too_large(int(length), max_bytes))


def too_large(size: int, max_bytes: int) -> str:
    return (f"the upload is {size / 1e6:.1f} MB or more; this server accepts at most {max_bytes / 1e6:.1f} MB "
            "(--max-upload-mb): send a shorter or smaller video")


async def receive(request: Request, folder: Path, max_bytes: int) -> Upload:
    """Stream the form's files into `folder`. Raises UploadError (the folder removed) or
    ClientDisconnect (the folder removed)."""
    boundary = check_form_type(request)
    check_declared_size(request, max_bytes)
    upload = Upload(folder)
    folder.mkdir(parents=True)
    writer = PartWriter(upload)
    parser = MultipartParser(boundary, writer.callbacks())
    received = 0
    chunks = request.stream()  # one iterator: after a refusal, drain() reads on from where we stopped
    try:
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > max_bytes:
                    writer.close()
                    upload.remove()  # at once: a refused upload does not wait on the client
                    raise UploadError(413, too_large(received, max_bytes))
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as err:
            raise UploadError(400, f"a malformed multipart body ({err}): {FORM_HELP}") from None
        finally:
            writer.close()
        if writer.open_part is not None or not writer.finished:
            raise UploadError(400, f"the multipart body ended early: {FORM_HELP}")
        check_fields(upload)
    except UploadError:
        upload.remove()
        await drain(chunks)
        raise
    except BaseException:  # ClientDisconnect, a cancelled task, a parser error
        upload.remove()
        raise
    return upload


def check_fields(upload: Upload) -> None:
    if "video" not in upload.files:
        raise UploadError(422, f"no 'video' file in the form: {FORM_HELP}")
    if "subtitles" in upload.files and "transcript" in upload.files:
        raise UploadError(422, "send either 'subtitles' or 'transcript', not both")


async def drain(chunks: AsyncIterator[bytes]) -> None:
    """Read and drop what is left of a refused body (`request.stream()`, or the iterator already
    being read), up to DRAIN_MAX_BYTES: a client still sending then reads our answer rather than
    a reset connection."""
    left = DRAIN_MAX_BYTES
    try:
        async for chunk in chunks:
            left -= len(chunk)
            if left < 0:
                return
    except ClientDisconnect:
        return


class PartWriter:
    """python-multipart callbacks that write each file part to its server-chosen path."""

    def __init__(self, upload: Upload):
        self.upload = upload
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.open_part = None
        self.finished = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda data, start, end: self.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": lambda data, start, end: self.open_part.write(data[start:end]),
            "on_part_end": self.close,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self.headers = {}

    def header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename", b"").decode("utf-8", "replace") or None
        if name not in FIELDS:
            raise UploadError(422, f"unknown form field {name!r}: {FORM_HELP}")
        if name in self.upload.files:
            raise UploadError(422, f"the form has more than one {name!r}: send one file per field")
        suffix = safe_suffix(filename)
        if name == "subtitles" and suffix not in SUBTITLE_SUFFIXES:
            raise UploadError(422, f"subtitles {display_name(filename, 'without a name')!r}: not .srt or .vtt; "
                                   "name the file .srt or .vtt, or send a transcript .json as 'transcript'")
        if name == "transcript":
            suffix = ".json"  # the parser goes by the suffix: the field says what it is
        path = self.upload.folder / f"{name}{suffix}"
        self.upload.files[name] = path
        self.upload.names[name] = display_name(filename, f"the {name} upload")
        self.open_part = open(path, "wb")

    def close(self) -> None:
        if self.open_part is not None:
            self.open_part.close()
            self.open_part = None

    def end(self) -> None:
        self.finished = True

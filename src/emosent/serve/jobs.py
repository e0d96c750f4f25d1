"""The job store: one SQLite table under the data directory, the only record of what was asked.

A job is queued, then running (with progress), then done (its result a JSON file beside the
database) or failed (with a reason). Jobs that were queued or running when a server stopped are
failed at the next start with INTERRUPTED: their uploads are gone, so the client must send again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
INTERRUPTED = "interrupted by a server restart; submit again"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    video TEXT NOT NULL,        -- the client's file name, for display only (never a path)
    segments TEXT NOT NULL,     -- where the segments come from, e.g. "subtitles talk.srt"
    created REAL NOT NULL,      -- seconds since the epoch
    started REAL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT
)
"""


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    video: str
    segments: str
    created: float
    started: float | None
    finished: float | None
    done: int
    total: int
    error: str | None


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """Ids are 32 lowercase hex digits: anything else is unknown without asking the database."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class JobStore:
    """Jobs in `data_dir/jobs.sqlite3`, results in `data_dir/results/ID.json`. One connection
    shared by the event loop and the workers, each statement under a lock (statements are short)."""

    def __init__(self, data_dir: Path):
        self.results = data_dir / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL: a committed row survives the process being killed; readers never wait on a writer
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)

    def _run(self, sql: str, *args) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def interrupt_unfinished(self) -> int:
        """At start-up: fail the jobs a previous server left queued or running; returns how many."""
        cursor = self._run("UPDATE jobs SET state = ?, error = ?, finished = ? WHERE state IN (?, ?)",
                           FAILED, INTERRUPTED, time.time(), QUEUED, RUNNING)
        return cursor.rowcount

    def add(self, job_id: str, video: str, segments: str) -> None:
        self._run("INSERT INTO jobs (id, state, video, segments, created) VALUES (?, ?, ?, ?, ?)",
                  job_id, QUEUED, video, segments, time.time())

    def get(self, job_id: str) -> Job | None:
        row = self._run("SELECT id, state, video, segments, created, started, finished, done, total, error "
                        "FROM jobs WHERE id = ?", job_id).fetchone()
        return Job(*row) if row else None

    def start(self, job_id: str) -> bool:
        return self._run("UPDATE jobs SET state = ?, started = ? WHERE id = ? AND state = ?",
                         RUNNING, time.time(), job_id, QUEUED).rowcount == 1

    def progress(self, job_id: str, done: int, total: int) -> None:
        self._run("UPDATE jobs SET done = ?, total = ? WHERE id = ?", done, total, job_id)

    def finish(self, job_id: str) -> bool:
        """Mark done (the result file is already written); False when the job was deleted meanwhile."""
        return self._run("UPDATE jobs SET state = ?, finished = ? WHERE id = ? AND state = ?",
                         DONE, time.time(), job_id, RUNNING).rowcount == 1

    def fail(self, job_id: str, reason: str) -> None:
        self._run("UPDATE jobs SET state = ?, error = ?, finished = ? WHERE id = ?", FAILED, reason, time.time(), job_id)

    def delete(self, job_id: str) -> bool:
        """Remove the job and its result files; False when there was no such job."""
        gone = self._run("DELETE FROM jobs WHERE id = ?", job_id).rowcount == 1
        for path in (self.result_path(job_id), self.timeline_path(job_id)):
            path.unlink(missing_ok=True)
        return gone

    def result_path(self, job_id: str) -> Path:
        return self.results / f"{job_id}.json"

    def timeline_path(self, job_id: str) -> Path:
        return self.results / f"{job_id}.png"

    def close(self) -> None:
        with self._lock:
            self._db.close()

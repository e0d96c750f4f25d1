"""The worker pool: threads that share one loaded model and run `emosent.analyze.analyze` on
queued jobs, the same function the command line calls.

Admission is bounded: a request reserves a place before its upload is read, and is refused
(503 with Retry-After) when `queue_size` jobs are already waiting. A job's upload folder is
removed when the job ends, however it ends.
"""

from __future__ import annotations

import logging
import math
import queue
import shutil
import threading
import time
from pathlib import Path

from emosent.analyze import analyze
from emosent.files import write_json
from emosent.serve.jobs import JobStore
from emosent.serve.uploads import public

log = logging.getLogger("emosent.serve")
FIRST_GUESS_S = 10.0  # Retry-After's job duration before any job has finished


class Cancelled(Exception):
    """The job was deleted, or the server is stopping."""


class WorkerPool:
    def __init__(self, store: JobStore, model, uploads: Path, *, workers: int, queue_size: int, batch_size: int,
                 device: str):
        self.store, self.model, self.uploads = store, model, uploads
        self.queue_size, self.batch_size, self.device = queue_size, batch_size, device
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # reserved places: uploads being received and queued jobs
        self._cancelled: set[str] = set()
        self._stopping = threading.Event()
        self._mean_job_s = FIRST_GUESS_S
        self._threads = [threading.Thread(target=self._work, name=f"emosent-worker-{i}", daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def alive(self) -> bool:
        return not self._stopping.is_set() and all(t.is_alive() for t in self._threads)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the running jobs' current batch; they stay `running` in the store, and the
        next start reports them interrupted."""
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def reserve(self) -> bool:
        """Take a place in the queue for a request about to upload; False when it is full."""
        with self._lock:
            if self._waiting >= self.queue_size or self._stopping.is_set():
                return False
            self._waiting += 1
            return True

    def release(self) -> None:
        """Give back a reserved place whose upload was refused or lost."""
        with self._lock:
            self._waiting -= 1

    def submit(self, job_id: str) -> None:
        """Queue a job whose place was reserved and whose upload is complete and in the store."""
        self._jobs.put(job_id)

    def cancel(self, job_id: str) -> None:
        """A deleted job: skipped when it comes up, stopped after its current batch if running."""
        with self._lock:
            self._cancelled.add(job_id)

    def retry_after_s(self) -> int:
        """Seconds until a place is likely to be free: the queue's length in mean job durations."""
        with self._lock:
            return max(1, math.ceil(self._mean_job_s * self._waiting / len(self._threads)))

    def _work(self) -> None:
        while (job_id := self._jobs.get()) is not None:
            with self._lock:
                self._waiting -= 1
            started = time.monotonic()
            try:
                self._run(job_id)
            except Exception:  # never lose a worker: the job is failed, the server goes on
                log.exception("job %s", job_id)
                self.store.fail(job_id, "internal error in the analysis; see the server log")
            finally:
                shutil.rmtree(self.uploads / job_id, ignore_errors=True)
                with self._lock:
                    self._cancelled.discard(job_id)
                    self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.monotonic() - started)

    def _run(self, job_id: str) -> None:
        if self._is_cancelled(job_id) or not self.store.start(job_id):
            return  # deleted while queued
        files = {p.stem: p for p in (self.uploads / job_id).iterdir()}

        def progress(done: int, total: int) -> None:
            if self._is_cancelled(job_id):
                raise Cancelled
            self.store.progress(job_id, done, total)

        job = self.store.get(job_id)
        try:
            result = analyze(files["video"], self.model, subtitles=files.get("subtitles"), transcript=files.get("transcript"),
                             asr="subtitles" not in files and "transcript" not in files, batch_size=self.batch_size,
                             option_hints=False,  # a warning names no command-line option: a service user has none
                             device=self.device, progress=progress)
        except Cancelled:
            return
        except (ValueError, OSError) as err:  # what analyze says about its inputs: the job's reason
            self.store.fail(job_id, " ".join(retell(str(err), files, job).split()))
            return
        path = write_json(retell(result, files, job), self.store.result_path(job_id))
        if not self.store.finish(job_id):  # deleted while its result was being written
            path.unlink(missing_ok=True)

    def _is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled or self._stopping.is_set()


def retell(value, files: dict[str, Path], job):
    """`value` (a message, or a result's strings) with the client's file names for our upload paths."""
    if isinstance(value, dict):
        return {k: retell(v, files, job) for k, v in value.items()}
    if isinstance(value, list):
        return [retell(v, files, job) for v in value]
    if not isinstance(value, str):
        return value
    return public(value, {path: (job.video if name == "video" else job.segments) if job else f"the {name}"
                          for name, path in files.items()})

"""A job's output, capped: what the method logs and prints goes into the run's log, bounded.

:class:`CappedLog` keeps the first and the last bytes written to it and counts what it cut
between them, so a method that logs 100 MB leaves a log of about :data:`LOG_CAP_BYTES` with a
note of how much is missing, and never holds the 100 MB in memory. :func:`capture_fds` points
the process's file descriptors 1 and 2 (stdout, stderr: ``print``, C libraries, child
processes, warnings) at a pipe drained into such a log for the duration of a job, so under Ray
nothing a method prints reaches Ray's session folder, and under the serial runner nothing
reaches the driver's terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator

#: Default cap of a run's log (bytes): half kept from the start, half from the end.
#: ``$OCCBENCH_LOG_CAP_BYTES`` changes it.
LOG_CAP_BYTES = 2**20


def log_cap_bytes() -> int:
    """The cap in force: ``$OCCBENCH_LOG_CAP_BYTES`` if set (at least 1 KiB), else 1 MiB."""
    try:
        return max(1024, int(os.environ.get("OCCBENCH_LOG_CAP_BYTES", LOG_CAP_BYTES)))
    except ValueError:
        return LOG_CAP_BYTES


class CappedLog:
    """Thread-safe byte sink keeping the first ``cap // 2`` and the last ``cap - cap // 2``
    bytes written; :meth:`text` joins them with a note of how many bytes were cut."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = log_cap_bytes() if cap is None else int(cap)
        self._head_cap = self.cap // 2
        self._tail_cap = self.cap - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0  # bytes written, kept or not
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self.total += len(data)
            room = self._head_cap - len(self._head)
            if room > 0:
                self._head += data[:room]
                data = data[room:]
            if data:
                self._tail += data[-self._tail_cap:]
                # trimmed in batches: amortised O(1) per byte, never more than 2x the cap held
                if len(self._tail) > 2 * self._tail_cap:
                    del self._tail[:-self._tail_cap]

    @property
    def cut(self) -> int:
        """Bytes written but not kept."""
        with self._lock:
            return self.total - len(self._head) - min(len(self._tail), self._tail_cap)

    def text(self) -> str:
        with self._lock:
            tail = bytes(self._tail[-self._tail_cap:]) if self._tail else b""
            head = bytes(self._head)
            cut = self.total - len(head) - len(tail)
        if cut <= 0:
            return (head + tail).decode("utf-8", errors="replace")
        note = (f"\n[occbench: {cut} bytes of this job's output cut here; the log keeps the first "
                f"{len(head)} and the last {len(tail)} bytes of {self.total} "
                f"(cap {self.cap} bytes, $OCCBENCH_LOG_CAP_BYTES)]\n")
        return (head.decode("utf-8", errors="replace") + note
                + tail.decode("utf-8", errors="replace"))


class CappedHandler(logging.Handler):
    """A logging handler writing formatted records (one line each, newline-terminated) into a
    :class:`CappedLog`, or through ``write`` when set: inside :func:`capture_fds`, its writer,
    so records and printed output share one stream and keep their order."""

    def __init__(self, sink: CappedLog) -> None:
        super().__init__()
        self.sink = sink
        self.write: Callable[[bytes], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", errors="replace")
            (self.write or self.sink.write)(data)
        except Exception:  # a broken record must not fail the job
            self.handleError(record)


#: Prefix of every job's logger (``context.logger``): ``occbench.job.<job_id>``.
JOB_LOGGER_PREFIX = "occbench.job."


def job_logger(job_id: object, handler: logging.Handler) -> logging.Logger:
    """The job's own logger (``occbench.job.<job_id>``, INFO, not propagating), writing to
    ``handler`` only. Through :func:`logging.getLogger`, so a method's ``logger.getChild(...)``
    loggers still reach the handler; :func:`release_job_logger` forgets it again."""
    logger = logging.getLogger(f"{JOB_LOGGER_PREFIX}{job_id}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def release_job_logger(logger: logging.Logger, *handlers: logging.Handler) -> None:
    """Detach and close ``handlers`` and take ``logger`` and its children out of logging's
    manager, so a worker that runs thousands of jobs does not keep a logger per job.

    (``logging.getLogger`` registers every logger for good: the issue counted 436 after 300
    jobs, and each ``setLevel`` walks all of them, so keeping them made a job's cost grow with
    the jobs before it.) A method that kept a reference to its logger still has a working
    object; a later ``getLogger`` of the same name makes a fresh one.
    """
    for h in handlers:
        logger.removeHandler(h)
        h.close()
    mgr = logger.manager
    name = logger.name
    prefix = name + "."
    lock = getattr(logging, "_lock", None)  # the module's own lock, guarding loggerDict
    with lock if lock is not None else contextlib.nullcontext():
        gone = [n for n in mgr.loggerDict if n == name or n.startswith(prefix)]
        dropped = [mgr.loggerDict.pop(n) for n in gone]
        # placeholders of the names above (``occbench.job``, ``occbench``) list their children
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            ph = mgr.loggerDict.get(".".join(parts[:i]))
            if isinstance(ph, logging.PlaceHolder):
                for obj in dropped:
                    if isinstance(obj, logging.Logger):
                        ph.loggerMap.pop(obj, None)


def _flush_std() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            if s is not None:
                s.flush()
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def capture_fds(sink: CappedLog, fds: tuple[int, ...] = (1, 2)
                ) -> Iterator[Callable[[bytes], None]]:
    """Send everything written to ``fds`` (default stdout and stderr, at the file-descriptor
    level, so C code and child processes too) into ``sink`` until the block ends.

    Yields a ``write(bytes)`` into the same pipe, for output that must keep its place among
    what was printed (log records).

    A reader thread drains a pipe; if something the method started still holds the pipe open
    at the end (a leftover child), the reader is abandoned after a few seconds rather than
    waited for, and what it reads later is dropped with the sink.
    """
    _flush_std()
    r, w = os.pipe()
    if hasattr(os, "set_blocking"):
        os.set_blocking(r, True)
    try:  # a big pipe buffer: a C library printing while holding the GIL does not stall on it
        import fcntl

        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 2**20)
    except (ImportError, OSError):
        pass
    saved: list[tuple[int, int]] = []
    try:
        for fd in fds:
            saved.append((fd, os.dup(fd)))
            os.dup2(w, fd)
    except OSError:
        for fd, s in saved:
            os.dup2(s, fd)
            os.close(s)
        os.close(r)
        os.close(w)
        raise
    own = os.dup(w)  # the writer handed out; closed before the reader is awaited
    os.close(w)  # only the redirected fds and `own` hold the write end: EOF once all close
    lock = threading.Lock()
    closed = False

    def write(data: bytes) -> None:
        with lock:
            if closed:  # a straggler (a method's thread) after the block: never a reused fd
                sink.write(data)
                return
            view = memoryview(data)
            while view:
                view = view[os.write(own, view):]

    def drain() -> None:
        while True:
            try:
                chunk = os.read(r, 2**20)
            except OSError:
                return
            if not chunk:
                return
            sink.write(chunk)

    reader = threading.Thread(target=drain, name="occbench-capture", daemon=True)
    reader.start()
    try:
        yield write
    finally:
        _flush_std()
        for fd, s in saved:
            os.dup2(s, fd)
            os.close(s)
        with lock:
            closed = True
            os.close(own)
        reader.join(timeout=5.0)
        if not reader.is_alive():
            os.close(r)


__all__ = ["LOG_CAP_BYTES", "CappedHandler", "CappedLog", "capture_fds", "log_cap_bytes"]

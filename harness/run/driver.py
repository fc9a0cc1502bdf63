"""The driver: plans jobs, hands them to a runner, scores results with labels, writes the store.

Only this process loads test labels. It computes every metric under the job's named protocol,
then writes the run (scores with labels, metrics, provenance, log) atomically into the store.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from types import FrameType
from typing import Any

import numpy as np
from occbench.harness.api import Labels, verify_labels_match
from occbench.harness.run.execute import JobOutput
from occbench.harness.run.runner import Runner
from occbench.harness.run.spec import Job, make_dataset
from occbench.harness.scoring.protocols import get_protocol
from occbench.harness.store.runstore import (
    RECORD_SCHEMA,
    DiskFullError,
    JobLock,
    RangeClaim,
    RunStore,
)

#: Progress events: ``start`` (claimed, handed to the runner), ``locked`` (another driver holds
#: it), ``storing`` (scored and checked; its run goes to the store), then ``ok`` (stored) or
#: ``failed`` (with or without ``storing`` before it).
ProgressFn = Callable[[str, Job, JobOutput | None], None]


@dataclass
class RunSummary:
    planned: int = 0
    already_done: int = 0
    ran: int = 0
    ok: int = 0
    failed: int = 0
    skipped_locked: int = 0
    #: jobs whose last attempt failed with a method error (deterministic) and were not rerun
    not_retried: int = 0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # (display, message)
    stop_reason: str | None = None

    @property
    def remaining(self) -> int:
        return self.planned - self.already_done - self.ok - self.failed - self.not_retried


@lru_cache(maxsize=32)
def _labels(dataset: str, params_json: str, root: str | None, normal_class: str | None) -> Labels:
    ds = make_dataset(dataset, json.loads(params_json), root)
    return ds.test_labels(normal_class)


def job_labels(job: Job, data_root: str | None) -> Labels:
    return _labels(job.dataset, json.dumps(job.dataset_params, sort_keys=True), data_root,
                   job.normal_class)


def finalize(job: Job, out: JobOutput, labels: Labels, runner: str,
             processed: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None
             ) -> dict[str, Any]:
    """The run record of a worker's output (no metrics: they are derived, see
    :meth:`RunStore.write_metrics`). Raises ProtocolError/ValueError when the job's protocol
    cannot evaluate the raw scores, so nothing unscorable is stored as done. ``processed``:
    the protocol's ``process(out.raw, labels.per_video)`` if the caller already has it (that
    is the check)."""
    if processed is None:
        # validates: NaN/inf/length against labels
        get_protocol(job.protocol).process(out.raw, labels.per_video)
    prov = dict(out.provenance)
    prov.update(runner=runner, driver_host=socket.gethostname(), label_source=labels.source)
    return {"schema": RECORD_SCHEMA, "job_id": job.job_id, "status": "ok",
            "job": job.to_dict(), "provenance": prov}


def failure_record(job: Job, out: JobOutput, runner: str) -> dict[str, Any]:
    return {
        "schema": RECORD_SCHEMA, "job_id": job.job_id, "status": out.status, "job": job.to_dict(),
        "metrics": None, "protocol": get_protocol(job.protocol).describe(),
        "provenance": {**out.provenance, "runner": runner}, "error": out.error, "log": out.log,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def _sigint_to_flag(summary: RunSummary, runner: Runner | None = None) -> Iterator[None]:
    """First Ctrl-C: no new jobs, the running ones finish (their count is printed). Second: the
    runner cancels the running jobs (:meth:`Runner.cancel`, from its own loop, so nothing is
    interrupted half-way). Third, or a runner that cannot cancel: KeyboardInterrupt."""
    prev = signal.getsignal(signal.SIGINT)
    presses = [0]

    def handler(signum: int, frame: FrameType | None) -> None:
        presses[0] += 1
        n = runner.running() if runner is not None else 0
        jobs = f"{n} running job{'s' if n != 1 else ''}"
        if presses[0] == 1:
            summary.interrupted = True
            summary.stop_reason = "interrupted (Ctrl-C): rerun the same command to resume"
            print(f"Ctrl-C: no new jobs; finishing {jobs}; Ctrl-C again to cancel them"
                  if n else "Ctrl-C: no new jobs; stopping", file=sys.stderr, flush=True)
            return
        if presses[0] == 2 and runner is not None and runner.cancel():
            print(f"cancelling {jobs} (Ctrl-C again to quit at once)", file=sys.stderr,
                  flush=True)
            return
        signal.signal(signal.SIGINT, prev)
        if n:
            print(f"cancelling {jobs}", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)


def run_jobs(
    jobs: Sequence[Job], store: RunStore, runner: Runner, data_root: str | None = None,
    progress: ProgressFn | None = None, retry_failed: bool = False, writers: int = 2,
) -> RunSummary:
    """Run the jobs not yet in ``store``; safe against other drivers on the same store.

    A job whose last failure was the method's own error (``error.origin == "method"``: same
    method, data and seed raise the same way again) is not rerun unless ``retry_failed``;
    timeouts, killed workers and harness errors are. ``writers``: threads writing finished
    runs into the store while the runner goes on (0: each run is written before the next job
    is handed out).
    """
    store.init()
    summary = RunSummary(planned=len(jobs))
    todo = []
    method_failed = set() if retry_failed else _method_failures(store)
    for j in jobs:
        if store.has(j.job_id):
            summary.already_done += 1
        elif j.job_id in method_failed:
            summary.not_retried += 1
        else:
            todo.append(j)
    locks: dict[str, RangeClaim | JobLock] = {}
    # the store's writes (parquet, JSON, five file operations a run) run in threads beside the
    # runner's loop: on a virtual disk the file operations are the kernel's CPU time, and with
    # pyarrow's encoding they release the GIL, so they use another core. A job is counted,
    # reported and its claim released only once its run is in the store; at most
    # ``2 * writers`` wait, so memory stays flat.
    pool = ThreadPoolExecutor(writers, thread_name_prefix="occbench-store") if writers else None
    pending: deque[Future[None]] = deque()
    # a writer reports its run as soon as it is stored (not when the runner next calls back:
    # a serial grid would show each job done one job late), so the counts and ``progress``
    # are touched from several threads: one at a time
    guard = threading.RLock()

    def report(event: str, job: Job, out: JobOutput | None) -> None:
        if progress:
            with guard:
                progress(event, job, out)

    def claim(job: Job) -> bool:
        if summary.stop_reason:
            return False
        lock = store.job_lock(job.job_id)
        if not lock.acquire():
            with guard:
                summary.skipped_locked += 1
            report("locked", job, None)
            return False
        if store.has(job.job_id):  # another driver finished it meanwhile
            lock.release()
            with guard:
                summary.already_done += 1
            return False
        locks[job.job_id] = lock
        report("start", job, None)
        return True

    def release(job: Job) -> None:
        lock = locks.pop(job.job_id, None)
        if lock is not None:
            lock.release()

    def write(job: Job, record: dict[str, Any], out: JobOutput, labels: Labels,
              processed: Any) -> None:
        """Store one run, count and report it, release its claim (in a writer thread, or
        inline with ``writers=0``). A full disk stops the run; any other error is raised where
        the driver waits for the write."""
        try:
            store.write_run(record, out.raw, labels.per_video, out.log)
            store.write_metrics(job.job_id, job.protocol, out.raw, labels.per_video, processed)
        except DiskFullError as exc:
            with guard:
                summary.stop_reason = str(exc)
                summary.failed += 1
                summary.failures.append((job.display, str(exc)))
                report("failed", job, out)
            return
        else:
            with guard:
                summary.ok += 1
                report("ok", job, out)
        finally:
            release(job)

    def drain(keep: int) -> None:
        """Wait for the oldest writes until at most ``keep`` are in the writers' hands, and
        raise the error of any that failed other than by a full disk."""
        while pending and (len(pending) > keep or pending[0].done()):
            pending.popleft().result()

    def done(job: Job, out: JobOutput) -> None:
        written = False
        try:
            with guard:
                summary.ran += 1
            if out.status == "ok":
                try:
                    labels = job_labels(job, data_root)
                    verify_labels_match_raw(out, labels)
                    # processed once: the check before storing, and the metrics after
                    processed = get_protocol(job.protocol).process(out.raw, labels.per_video)
                    record = finalize(job, out, labels, runner.name, processed)
                except (ValueError, OSError) as exc:
                    out = JobOutput(job.job_id, "failed", {}, out.provenance, out.log,
                                    {"type": type(exc).__name__, "message": str(exc),
                                     "traceback": "", "origin": "harness"})
                else:
                    written = True
                    # out of the runner's hands; its run goes to the store
                    report("storing", job, out)
                    if pool is None:
                        write(job, record, out, labels, processed)
                        return
                    pending.append(pool.submit(write, job, record, out, labels, processed))
                    drain(2 * writers)
                    return
            with guard:
                summary.failed += 1
                msg = (out.error or {}).get("message", "unknown error")
                summary.failures.append((job.display,
                                         f"{(out.error or {}).get('type')}: {msg}"))
            try:
                store.write_failure(failure_record(job, out, runner.name))
            except OSError as exc:
                summary.stop_reason = f"cannot record failures in {store.path}: {exc}"
            report("failed", job, out)
        finally:
            if not written:
                release(job)

    def stopped() -> bool:
        # a writer's error surfaces here; a full disk found by a writer set stop_reason itself
        drain(2 * writers)
        return summary.stop_reason is not None

    with ExitStack() as stack:
        stack.enter_context(_sigint_to_flag(summary, runner))
        try:
            runner.run(todo, data_root, claim, done, stopped)
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.stop_reason = "interrupted (Ctrl-C): rerun the same command to resume"
        finally:
            try:
                # every run handed to a writer is stored (or its error raised) before returning:
                # a caller reads the store right after
                drain(0)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
                for lock in locks.values():
                    lock.release()
    return summary


def _method_failures(store: RunStore) -> set[str]:
    """Jobs whose recorded failure is a method error (not retried by a rerun)."""
    out = set()
    try:
        fails = store.failures()
    except (OSError, ValueError) as exc:  # an unreadable failure record never stops a run
        print(f"warning: cannot read {store.failed_dir}: {exc}", file=sys.stderr)
        return set()
    for f in fails:
        err = f.get("error") if isinstance(f, dict) else None
        if isinstance(err, dict) and err.get("origin") == "method":
            out.add(str(f.get("job_id")))
    return out


def verify_labels_match_raw(out: JobOutput, labels: Labels) -> None:
    """Label/frame count mismatch is a dataset error, named per video."""
    for vid, lab in labels.per_video.items():
        if vid not in out.raw:
            raise ValueError(f"no scores for test video {vid!r}")
        if len(out.raw[vid]) != len(lab):
            where = f"test video {vid!r}" if vid else "test set"
            raise ValueError(f"{where}: {len(out.raw[vid])} scored frames but {len(lab)} labels; "
                             "the label file does not match the frames (run `occbench data "
                             "check`)")


__all__ = ["RunSummary", "finalize", "job_labels", "run_jobs", "verify_labels_match"]

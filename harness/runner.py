"""Runners execute jobs; they never compute metrics or touch labels.

A runner receives the jobs and three callbacks from the driver:

* ``claim(job) -> bool`` just before a job is dispatched (False: skip it — it is done, or another
  driver holds it);
* ``done(job, output)`` with the :class:`~occbench.harness.execute.JobOutput` of each job;
* ``stopped()`` → True when the driver wants scheduling to stop (Ctrl-C, disk full).

The serial runner keeps one worker *process* (spawned, so it inherits nothing from the driver,
labels included) and runs jobs in it one at a time. A job that outlives its time limit, or a
worker that dies (killed, out of memory), is recorded as failed and a fresh worker takes over.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from occbench.harness.execute import (
    JobOutput,
    RootHandle,
    enter_worker,
    execute_job,
    scrubbed_environ,
)
from occbench.harness.spec import Job

ClaimFn = Callable[[Job], bool]
DoneFn = Callable[[Job, JobOutput], None]
StopFn = Callable[[], bool]


class RunnerError(RuntimeError):
    """A runner cannot start (e.g. a Ray address that cannot be reached); the message names
    the fix. The CLI prints it as one ``error:`` line."""


class Runner(ABC):
    """Executes ``execute_job`` for each job somewhere; see module docstring for the callbacks."""

    name: str = "runner"

    @abstractmethod
    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (workers, clusters)."""


def failed_output(job: Job, kind: str, message: str, wall: float | None = None) -> JobOutput:
    return JobOutput(job.job_id, "failed", {}, {"wall_time_s": wall},
                     error={"type": kind, "message": message, "traceback": ""})


def _warm_up(job: Job | None = None, device: str = "cpu", sealed: str = "off") -> None:
    from occbench.harness.execute import prestart_sandbox

    if job is not None:  # the sandbox's start must not count against the first job's limit
        prestart_sandbox(job, device, sealed)


def _worker_init() -> None:
    # this process runs methods: labels refused for good, the driver's argv/env forgotten
    enter_worker()


class SerialRunner(Runner):
    """One job at a time in a separate worker process (``in_process=True`` for debugging).

    ``sealed``: ``"auto"`` (default), ``"require"`` or ``"off"``, see
    :func:`~occbench.harness.execute.execute_job`.
    """

    name = "serial"

    def __init__(self, device: str = "cpu", in_process: bool = False,
                 sealed: str = "auto") -> None:
        self.device = device
        self.in_process = in_process
        self.sealed = sealed
        self._pool: ProcessPoolExecutor | None = None
        self._root: str | None = None

    def _get_pool(self, job: Job | None = None) -> ProcessPoolExecutor:
        if self._pool is None:
            with scrubbed_environ(self._root):  # the worker's environment names no data root
                self._pool = ProcessPoolExecutor(max_workers=1, initializer=_worker_init,
                                                 mp_context=mp.get_context("spawn"))
            # start the worker (imports) before any job's time limit starts counting
            self._pool.submit(_warm_up, job, self.device, self.sealed).result()
        return self._pool

    def _kill_pool(self) -> None:
        if self._pool is None:
            return
        procs = list(getattr(self._pool, "_processes", {}).values())
        for p in procs:
            p.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)
        self._pool = None

    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None:
        self._root = data_root
        for job in jobs:
            if stopped():
                break
            if not claim(job):
                continue
            if self.in_process:
                done(job, execute_job(job, data_root, self.device, self.sealed))
                continue
            t0 = time.perf_counter()
            fut = self._get_pool(job).submit(execute_job, job, RootHandle(data_root), self.device,
                                          self.sealed)
            try:
                out = fut.result(timeout=job.time_limit_s)
            except FutureTimeout:
                self._kill_pool()
                out = failed_output(job, "TimeLimitExceeded",
                                    f"job exceeded its time limit of {job.time_limit_s} s",
                                    time.perf_counter() - t0)
                out.status = "timeout"
            except BrokenProcessPool:
                self._kill_pool()
                out = failed_output(job, "WorkerDied",
                                    "the worker process died during the job (killed, or out of "
                                    "memory)", time.perf_counter() - t0)
            except KeyboardInterrupt:
                self._kill_pool()
                raise
            done(job, out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

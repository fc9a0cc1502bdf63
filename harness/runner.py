"""Runners execute jobs; they never compute metrics or touch labels.

A runner receives the jobs and three callbacks from the driver:

* ``claim(job) -> bool`` just before a job is dispatched (False: skip it — it is done, or another
  driver holds it);
* ``done(job, output)`` with the :class:`~occbench.harness.execute.JobOutput` of each job;
* ``stopped()`` → True when the driver wants scheduling to stop (Ctrl-C, disk full).

The serial runner keeps one worker *process* (spawned, so it inherits nothing from the driver,
labels included) and runs jobs in it one at a time: a queue of jobs runs back to back without
re-importing or re-loading data (the worker caches decoded splits). A job that outlives its time
limit, or a worker that dies (killed, out of memory), is recorded as failed and a fresh worker
takes over. With ``group=G`` > 1 it fits up to G compatible jobs (same training data, same
``Method.stack_key``) as one stacked computation (:func:`~occbench.harness.execute.execute_group`,
unsealed) and still reports one output per job.
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
    execute_group,
    execute_job,
    group_jobs,
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
                 sealed: str = "auto", group: int = 1) -> None:
        if group < 1:
            raise ValueError(f"group must be >= 1 (jobs fitted together), got {group}")
        self.device = device
        self.in_process = in_process
        self.sealed = sealed
        #: up to this many compatible jobs are fitted as one stacked computation
        self.group = group
        #: wall-clock time (``time.time()``) no job may run past; None = no deadline
        self.deadline: float | None = None
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
        units = group_jobs(jobs, self.group) if self.group > 1 else [[j] for j in jobs]
        for unit in units:
            if stopped():
                break
            unit = [j for j in unit if claim(j)]
            if not unit:
                continue
            outs = self._run_unit(unit, data_root)
            for job, out in zip(unit, outs, strict=True):
                done(job, out)

    def _run_unit(self, unit: list[Job], data_root: str | None) -> list[JobOutput]:
        """Outputs of one job, or of a stacked group (time limit: the sum of its jobs')."""
        if self.in_process:
            if len(unit) == 1:
                return [execute_job(unit[0], data_root, self.device, self.sealed)]
            return execute_group(unit, data_root, self.device, self.sealed)
        limits = [j.time_limit_s for j in unit]
        limit: float | None = unit[0].time_limit_s
        if len(unit) > 1:
            limit = None if any(t is None for t in limits) else float(sum(t or 0 for t in limits))
        if self.deadline is not None:  # never run past it, whatever the job's own limit
            left = max(self.deadline - time.time(), 0.0)
            limit = left if limit is None else min(limit, left)
        t0 = time.perf_counter()
        if len(unit) == 1:
            fut = self._get_pool(unit[0]).submit(execute_job, unit[0], RootHandle(data_root),
                                                 self.device, self.sealed)
        else:
            fut = self._get_pool(unit[0]).submit(execute_group, unit, RootHandle(data_root),
                                                 self.device, self.sealed)
        try:
            res = fut.result(timeout=limit)
            return [res] if isinstance(res, JobOutput) else list(res)
        except FutureTimeout:
            self._kill_pool()
            outs = []
            for job in unit:
                out = failed_output(job, "TimeLimitExceeded",
                                    f"job exceeded its time limit of {limit} s"
                                    + (f" (a stacked group of {len(unit)})" if len(unit) > 1
                                       else ""), time.perf_counter() - t0)
                out.status = "timeout"
                outs.append(out)
            return outs
        except BrokenProcessPool:
            self._kill_pool()
            return [failed_output(job, "WorkerDied", "the worker process died during the job "
                                  "(killed, or out of memory)", time.perf_counter() - t0)
                    for job in unit]
        except KeyboardInterrupt:
            self._kill_pool()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

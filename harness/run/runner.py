"""Runners execute jobs; they never compute metrics or touch labels.

A runner receives the jobs and three callbacks from the driver:

* ``claim(job) -> bool`` just before a job is dispatched (False: skip it — it is done, or another
  driver holds it);
* ``done(job, output)`` with the :class:`~occbench.harness.run.execute.JobOutput` of each job;
* ``stopped()`` → True when the driver wants scheduling to stop (Ctrl-C, disk full).

and reports :meth:`Runner.running` (jobs in flight), which the driver shows on Ctrl-C. On a
second Ctrl-C the driver calls :meth:`Runner.cancel` (from its signal handler): the runner kills
the running jobs from its own loop and returns without handing them to ``done``.

Every job has a time limit: its own ``job.time_limit_s``, else the runner's
``default_time_limit_s`` (:data:`~occbench.harness.run.limits.DEFAULT_TIME_LIMIT_S`, 2 h); ``0``
means none. A job past it is stopped and recorded with status ``timeout``.

The serial runner keeps one worker *process* (spawned, so it inherits nothing from the driver,
labels included) and runs jobs in it one at a time. The worker

* ignores SIGINT, so a Ctrl-C typed in a terminal (sent to the whole process group) reaches only
  the driver, which decides: first press, the running job finishes; second, it is killed;
* never outlives the driver: on Linux the kernel kills it when the driver dies
  (``PR_SET_PDEATHSIG``), and everywhere a watcher thread exits when its parent is gone; with it
  goes the only other holder of multiprocessing's ``resource_tracker`` pipe, so that exits too.

A worker killed by a signal (``kill -9``, the kernel's OOM killer) is replaced and the job retried
up to ``max_retries`` times, then recorded ``WorkerDied``; a worker that exits by itself (a
method calling ``os._exit``) is not retried, nor is a method's exception (it is a result).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from occbench.harness.run.execute import (
    JobOutput,
    RootHandle,
    enter_worker,
    execute_group,
    execute_job,
    group_jobs,
    scrubbed_environ,
)
from occbench.harness.run.limits import DEFAULT_TIME_LIMIT_S, effective_time_limit
from occbench.harness.run.spec import Job

ClaimFn = Callable[[Job], bool]
DoneFn = Callable[[Job, JobOutput], None]
StopFn = Callable[[], bool]


class RunnerError(RuntimeError):
    """A runner cannot start (e.g. a Ray address that cannot be reached); the message names
    the fix. The CLI prints it as one ``error:`` line."""


class Runner(ABC):
    """Executes ``execute_job`` for each job somewhere; see module docstring for the callbacks."""

    name: str = "runner"
    #: Seconds a job without a limit of its own may run (0 or None: no limit).
    default_time_limit_s: float | None = DEFAULT_TIME_LIMIT_S

    @abstractmethod
    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None: ...

    def running(self) -> int:
        """Jobs dispatched and not yet handed to ``done``."""
        return 0

    def cancel(self) -> bool:
        """Ask :meth:`run` to kill the running jobs and return soon (safe from a signal
        handler: it only sets a flag). False: this runner cannot, interrupt it instead."""
        return False

    def time_limit(self, job: Job) -> float | None:
        """Seconds ``job`` may run here, or ``None`` for no limit."""
        return effective_time_limit(job.time_limit_s, self.default_time_limit_s)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (workers, clusters)."""


def failed_output(job: Job, kind: str, message: str, wall: float | None = None,
                  origin: str = "runner") -> JobOutput:
    """A failure decided outside the method (``origin`` ``runner`` unless told otherwise)."""
    return JobOutput(job.job_id, "failed", {}, {"wall_time_s": wall},
                     error={"type": kind, "message": message, "traceback": "", "origin": origin})


def timeout_output(job: Job, limit: float, wall: float | None, how: str = "") -> JobOutput:
    out = failed_output(job, "TimeLimitExceeded",
                        f"job exceeded its time limit of {limit:g} s{how} (set it with "
                        "`time_limit_s` in the spec or `occbench run --time-limit`)", wall)
    out.status = "timeout"
    return out


# --------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int, kernel: bool) -> None:
    """Make this process exit when ``parent_pid`` is no longer its parent.

    ``kernel``: also ask Linux to SIGKILL it when the parent dies (exact, and works while the
    method holds the GIL). The kernel ties that to the parent *thread* that forked, so the
    serial runner asks for it only when it spawns from the main thread, which lives as long as
    the driver. The watcher thread (every 0.5 s) covers the rest and other systems.
    """
    if kernel and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="occbench-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int, kernel_deathsig: bool) -> None:
    # SIGINT was blocked across the spawn (see _sigint_blocked); ignore it for good, then drop
    # the block, which discards a Ctrl-C that arrived meanwhile (the driver got it too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent_pid, kernel_deathsig)
    # this process runs methods: labels refused for good, the driver's argv/env forgotten
    enter_worker()


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while a child is forked: the child starts with it blocked
    (so a Ctrl-C during its start-up cannot kill it) and ignores it once initialised; a SIGINT
    meanwhile stays pending here and is handled on leaving."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _warm_up(job: Job | None = None, device: str = "cpu", sealed: str = "off") -> None:
    from occbench.harness.run.execute import prestart_sandbox

    if job is not None:  # the sandbox's start must not count against the first job's limit
        prestart_sandbox(job, device, sealed)


def _exited(p: Any) -> bool:
    """Whether the process has ended (reaped or not): its sentinel pipe is closed."""
    from multiprocessing.connection import wait

    return bool(wait([p.sentinel], timeout=0))


def _exit_code(p: Any, wait_s: float = 5.0) -> int | None:
    """The exit code of an ended process, waiting up to ``wait_s`` seconds for it.

    The pool's own manager thread reaps a dead worker (``waitpid``) at the same moment as our
    ``join``: the loser's ``waitpid`` fails with ECHILD and multiprocessing reports None until
    the winner stores the code on the shared ``Popen`` object an instant later. Read too soon, a
    worker killed by SIGKILL looked like one with no code, and its job was not retried (CI)."""
    deadline = time.monotonic() + wait_s
    code = p.exitcode
    while code is None and time.monotonic() < deadline:
        time.sleep(0.01)
        code = p.exitcode
    return code


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


#: Environment of processes that run jobs with several threads: OpenMP threads (torch's, MKL's)
#: that sleep while waiting instead of spinning. On a machine busy with other work a spinning
#: thread holds a core the others need: ADACL on 2 loaded cores ran 14 s with 2 spinning
#: threads against 1.5 s with one, and 0.43 s with 2 passive ones. Set only where the user
#: has not chosen (``$OMP_WAIT_POLICY``).
WORKER_ENV: dict[str, str] = ({} if "OMP_WAIT_POLICY" in os.environ
                              else {"OMP_WAIT_POLICY": "PASSIVE"})


@contextmanager
def worker_environ() -> Iterator[None]:
    """Start worker processes inside this: their environment has :data:`WORKER_ENV`."""
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or ``taskset``'s
    share; ``os.cpu_count()`` where there is none), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# The serial runner
# --------------------------------------------------------------------------------------------


class SerialRunner(Runner):
    """One job at a time in a separate worker process (``in_process=True`` for debugging: no
    time limit, no isolation, no retries).

    ``max_retries``: retries of a job whose worker was killed by a signal.
    ``default_time_limit_s``: limit of jobs without one (0: none).
    ``sealed``: ``"auto"`` (default), ``"require"`` or ``"off"``, see
    :func:`~occbench.harness.run.execute.execute_job`.
    ``group``: with G > 1 up to G compatible jobs (same training data, same
    ``Method.stack_key``) are fitted as one stacked computation
    (:func:`~occbench.harness.run.execute.execute_group`, unsealed), still one output per job; the
    group's time limit is the sum of its jobs'.
    ``threads``: BLAS/OpenMP/torch threads each job runs with (``provenance["threads"]``);
    ``None`` (default): every core this process may run on (:func:`available_cores`), since
    jobs run one at a time. A method's declared ``Resources.cpus`` sizes its Ray tasks (and is
    often 1 so GPU jobs pack), not what it gets here. Torch on CPU sums in a thread-dependent
    order: scores are bit-identical for the same seed *and* thread count, and differ in the
    last digits between thread counts (see docs/ray.md).
    """

    name = "serial"

    def __init__(self, device: str = "cpu", in_process: bool = False, max_retries: int = 2,
                 default_time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
                 sealed: str = "auto", group: int = 1, threads: int | None = None) -> None:
        if group < 1:
            raise ValueError(f"group must be >= 1 (jobs fitted together), got {group}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        #: CPU threads per job (all available cores unless told)
        self.threads = threads or available_cores()
        #: up to this many compatible jobs are fitted as one stacked computation
        self.group = group
        #: wall-clock time (``time.time()``) no job may run past; None = no deadline
        self.deadline: float | None = None
        self.device = device
        self.in_process = in_process
        self.sealed = sealed
        self._root: str | None = None
        self.max_retries = max_retries
        self.default_time_limit_s = default_time_limit_s
        self._pool: ProcessPoolExecutor | None = None
        self._procs: list[Any] = []
        self._running = 0
        self._cancel = threading.Event()

    def running(self) -> int:
        return self._running

    def cancel(self) -> bool:
        if self.in_process:  # the job runs in this very thread: only an interrupt stops it
            return False
        self._cancel.set()
        return True

    def _get_pool(self, job: Job | None = None) -> ProcessPoolExecutor:
        if self._pool is None:
            kernel = threading.current_thread() is threading.main_thread()
            pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                       initializer=_worker_init,
                                       initargs=(os.getpid(), kernel))
            # the worker is forked inside this first submit; its environment names no data root
            with _sigint_blocked(), scrubbed_environ(self._root), worker_environ():
                warm = pool.submit(_warm_up, job, self.device, self.sealed)
            self._pool = pool
            self._procs = list(getattr(pool, "_processes", {}).values())
            # start the worker (imports) before any job's time limit starts counting
            warm.result()
        return self._pool

    def _kill_pool(self) -> list[int | None]:
        """Kill the worker; returns the exit codes it had *before* being killed."""
        if self._pool is None:
            return []
        procs = self._procs or list(getattr(self._pool, "_processes", {}).values())
        dead = []
        for p in procs:
            p.join(timeout=0.5)  # a dead worker's code is known at once
            gone = p.exitcode is not None or _exited(p)
            if not gone:
                p.kill()
            dead.append(gone)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)
        self._pool, self._procs = None, []
        return [_exit_code(p) if gone else None for p, gone in zip(procs, dead, strict=True)]

    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None:
        self._cancel.clear()
        self._root = data_root
        units = group_jobs(jobs, self.group) if self.group > 1 else [[j] for j in jobs]
        for unit in units:
            if stopped() or self._cancel.is_set():
                break
            unit = [j for j in unit if claim(j)]
            if not unit:
                continue
            if self.in_process:
                outs = ([execute_job(unit[0], data_root, self.device, self.sealed,
                                     threads=self.threads)]
                        if len(unit) == 1 else
                        execute_group(unit, data_root, self.device, self.sealed, self.threads))
                for job, out in zip(unit, outs, strict=True):
                    done(job, out)
                continue
            self._running = len(unit)
            try:
                got = self._run_unit(unit, data_root)
            except KeyboardInterrupt:  # interrupted (third Ctrl-C): the job dies with its worker
                self._kill_pool()
                raise
            finally:
                self._running = 0
            if got is None:  # cancelled (second Ctrl-C): not a result, the rerun runs it
                break
            for job, out in zip(unit, got, strict=True):
                done(job, out)

    def _unit_limit(self, unit: list[Job]) -> float | None:
        limits = [self.time_limit(j) for j in unit]
        limit = None if any(t is None for t in limits) else float(sum(t or 0 for t in limits))
        if self.deadline is not None:  # never run past it, whatever the job's own limit
            left = max(self.deadline - time.time(), 0.0)
            limit = left if limit is None else min(limit, left)
        return limit

    def _run_unit(self, unit: list[Job], data_root: str | None) -> list[JobOutput] | None:
        """Outputs of one job, or of a stacked group; None when cancelled."""
        limit = self._unit_limit(unit)
        deaths: list[str] = []
        while True:
            pool = self._get_pool(unit[0])  # a fresh worker's start-up does not count
            t0 = time.perf_counter()
            fut: Future[Any]
            if len(unit) == 1:
                fut = pool.submit(execute_job, unit[0], RootHandle(data_root), self.device,
                                  self.sealed, None, self.threads, self.max_retries)
            else:
                fut = pool.submit(execute_group, unit, RootHandle(data_root), self.device,
                                  self.sealed, self.threads)
            try:
                # polled, so a cancel (set from the signal handler) is seen within 0.2 s
                while True:
                    if self._cancel.is_set():
                        self._kill_pool()
                        return None
                    left = None if limit is None else limit - (time.perf_counter() - t0)
                    if left is not None and left <= 0:
                        raise FutureTimeout
                    try:
                        res = fut.result(timeout=0.2 if left is None else min(0.2, left))
                        break
                    except FutureTimeout:
                        continue
            except FutureTimeout:
                self._kill_pool()
                how = (f" (a stacked group of {len(unit)})" if len(unit) > 1 else "")
                return [timeout_output(j, float(limit or 0), time.perf_counter() - t0,
                                       how + " and its worker was killed") for j in unit]
            except BrokenProcessPool:
                codes = self._kill_pool()
                why = ", ".join(_signal_name(c) for c in codes) or "gone"
                deaths.append(why)
                by_signal = any(c is not None and c < 0 for c in codes)
                if by_signal and len(deaths) <= self.max_retries:
                    continue  # killed from outside (kill, OOM killer): a fault, not a result
                tried = (f"; {len(deaths)} attempts ({'; '.join(deaths)})"
                         if len(deaths) > 1 else "")
                return [failed_output(
                    j, "WorkerDied",
                    f"the worker process died during the job ({why}: killed, or out of "
                    f"memory){tried}", time.perf_counter() - t0) for j in unit]
            outs = [res] if isinstance(res, JobOutput) else list(res)
            if deaths:
                for o in outs:
                    o.provenance["worker_deaths"] = deaths
            return outs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._procs = None, []


__all__ = [
    "WORKER_ENV",
    "ClaimFn",
    "DoneFn",
    "Runner",
    "RunnerError",
    "SerialRunner",
    "StopFn",
    "available_cores",
    "failed_output",
    "timeout_output",
]

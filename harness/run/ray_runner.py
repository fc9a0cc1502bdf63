"""Run jobs as Ray tasks: one laptop (embedded local Ray) to a GPU cluster (``--address``).

This is the only module of occbench that imports :mod:`ray`.

How a job runs
    Each job is one Ray task calling :func:`~occbench.harness.run.execute.execute_job`, with the
    resources its method declares (``Method.resources_for()``: CPUs, fractional GPUs, memory).
    A GPU job gets ``device="cuda:N"``, the GPU Ray assigned it (see Data preparation); a job
    given no GPU runs with ``device="cpu"``. The task returns the raw
    scores; the driver fetches finished results one at a time (``ray.wait`` then ``ray.get`` of
    that ref), computes metrics with the labels only it loads, and writes the store, so worker
    nodes need no shared file system and score arrays travel through Ray's object store.

Data preparation
    Datasets are prepared once per node and worker process, not once per job: video datasets
    decode into the per-node frame cache (``occbench.datasets.cache``, memmapped by every worker),
    and CPU workers are reused between tasks so ``execute._load_split``'s in-process cache serves
    later jobs on the same split (recorded as ``provenance["data_cache"]``: ``hit``/``miss``).
    GPU workers are reused too, on every node: they see all GPUs of their node (Ray is told not
    to narrow ``CUDA_VISIBLE_DEVICES`` for them, since a CUDA context cannot follow a changed
    one) and run each task on ``cuda:N``, N the index of the GPU Ray assigned it. After each
    GPU job the worker empties torch's CUDA cache; a GPU job that fails retires its worker
    (fresh process for the next job). Jobs run with the CPU cores Ray assigned them as their
    BLAS/OpenMP/torch thread count (``provenance["threads"]``).

Faults
    A worker or node that dies mid-job (``kill -9``, the kernel's OOM killer, a lost node) is
    retried by Ray up to ``max_retries`` times, then recorded as failed (``WorkerDied``) with
    Ray's reason. A worker killed by Ray's memory monitor is retried ``OOM_RETRIES`` times
    (embedded Ray) and then recorded as ``OutOfMemory``. A method's
    exception is never retried: ``execute_job`` returns it as a failure with the traceback. A job
    running longer than ``job.time_limit_s`` (measured from when it starts on a worker, not from
    submission) is force-cancelled (its worker is killed) and recorded with status ``timeout``.
    When the driver asks to stop (first Ctrl-C) no new job is submitted and the running ones are
    finished; a second Ctrl-C cancels them.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ray
from occbench.harness import registry
from occbench.harness.api import Resources
from occbench.harness.run.execute import (
    JobOutput,
    RootHandle,
    _load_split,
    enter_worker,
    execute_job,
)
from occbench.harness.run.limits import DEFAULT_TIME_LIMIT_S
from occbench.harness.run.runner import (
    WORKER_ENV,
    ClaimFn,
    DoneFn,
    Runner,
    RunnerError,
    StopFn,
    failed_output,
    timeout_output,
)
from occbench.harness.run.spec import Job
from ray import cloudpickle

log = logging.getLogger("occbench.ray")

#: Default object store size of an embedded Ray (MiB): scores are small, and CI boxes have
#: little shared memory. Override with ``$OCCBENCH_RAY_OBJECT_STORE_MB``.
DEFAULT_OBJECT_STORE_MB = 512
_POLL_S = 0.25
#: Retries of a job killed by Ray's memory monitor (embedded Ray; clusters: RAY_task_oom_retries).
OOM_RETRIES = 2
#: Serialises :meth:`RayRunner._method_blob` (cloudpickle's by-value registry is global).
_BY_VALUE_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# What runs in the worker
# --------------------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class JobClock:
    """Counts the times each job has started on a worker: queued time must not count against
    its limit, and a retry (Ray reruns the task when its worker or node died) starts it anew.
    The driver times each start on its own clock, immune to node clock skew."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}

    def start(self, job_id: str) -> None:
        self.started[job_id] = self.started.get(job_id, 0) + 1

    def starts(self, keys: list[str] | None = None) -> dict[str, int]:
        """How often each of ``keys`` (all when None) has started; keys not yet started are
        left out. Only the asked-for come back: the driver asks for its limited jobs in flight,
        not every job the clock ever saw."""
        if keys is None:
            return dict(self.started)
        return {k: self.started[k] for k in keys if k in self.started}


def _ensure_method(job: Job, method_blob: bytes | None) -> None:
    """Register a method that the driver registered at run time (not by entry point)."""
    if method_blob is None or job.method in registry.methods:
        return
    cls = cloudpickle.loads(method_blob)
    registry.methods.register(cls, source="<runtime, shipped by the driver>")


def _drop_driver_cwd() -> None:
    """Take the driver's working directory off this worker's ``sys.path``.

    Ray puts the directory the driver was started in on every worker's import path (and
    starts local workers in it), so a folder there named like a plugin (or like a library a
    plugin imports) would shadow the installed one in workers but not in the serial runner.
    Plugins reach workers installed or shipped by value (:meth:`RayRunner._method_blob`),
    never through the driver's folder."""
    cwd = os.path.abspath(os.curdir)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != cwd]
    importlib.invalidate_caches()


def run_in_worker(job: Job, data_root: str | RootHandle | None, device: str,
                  method_blob: bytes | None, clock: Any | None,
                  sealed: str = "auto", retries: int = 2,
                  clock_key: str | None = None) -> JobOutput:
    """The Ray task body: ``execute_job`` plus where it ran (node, pid, GPUs, cache hit).

    Sealed jobs start the sandbox here, on whichever node runs the task.
    """
    if clock is not None:  # once per attempt: Ray's retry of this task calls it again
        clock.start.remote(clock_key or job.job_id)
    _drop_driver_cwd()
    enter_worker()  # this process runs methods: labels refused for good, no data root in env
    from occbench.harness.run import sandbox

    seal = sandbox.normalise_mode(sealed) != "off" and sandbox.probe().ok
    if not seal:  # sealed: the class is unpickled inside the sandbox, never here
        _ensure_method(job, method_blob)
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    rc = ray.get_runtime_context()
    assigned = rc.get_assigned_resources()
    # The job runs with the CPU cores Ray gave it (its declared CPUs, capped at the node).
    threads = max(1, int(assigned.get("CPU", 0.0)))
    # GPU workers see every GPU of their node (Ray leaves CUDA_VISIBLE_DEVICES alone in them,
    # see _gpu_task), so the task's GPU is picked by index: a reused worker whose CUDA context
    # was made for one job's GPU serves the next job on another GPU of the node.
    index = cuda_index(gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES")) if gpu_ids else None
    # (A GPU resource without CUDA, e.g. a simulated cluster's fake GPUs, runs on cpu.)
    dev = "cpu"
    if index is not None and _cuda_available():
        dev = f"cuda:{index}"
        if not seal:  # (sealed: the sealed process does it; here it would cost a CUDA context)
            import torch

            torch.cuda.set_device(index)  # for code that says plain "cuda"
    if device.startswith("cuda") and dev == "cpu":
        log.warning("job %s asked for cuda but got no usable GPU; running on cpu", job.job_id)
    hits = _load_split.cache_info().hits
    t0 = time.time()
    out = execute_job(job, data_root, dev, sealed, method_blob if seal else None, threads,
                      retries)
    out.provenance.update(
        ray_task_start=round(t0, 3), ray_task_end=round(time.time(), 3),  # epoch s: overlap
        ray_node_id=rc.get_node_id(), ray_worker_pid=os.getpid(),
        ray_gpu_ids=gpu_ids, ray_resources=assigned, ray_cuda_index=index,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        data_cache="hit" if _load_split.cache_info().hits > hits else "miss",
        # sealed: what the method declared inside the sandbox (no plugin code runs here)
        resources=(out.provenance.get("resources") if out.provenance.get("sealed")
                   else asdict(resources_of(job))),
    )
    if gpu_ids:
        # A failed GPU job may leave its CUDA context broken (illegal access, device-side
        # assert) or its memory held (tensors kept alive by the traceback): its worker is
        # retired and the next job gets a fresh process. A job that succeeded hands its cached
        # GPU memory back, so jobs sharing the card can use it.
        out.provenance["ray_worker_retired"] = out.status != "ok" and _retire_worker()
        _release_gpu_memory()
    return out


def cuda_index(gpu_ids: Sequence[str], visible: str | None) -> int:
    """The CUDA device index, in a process that sees ``visible`` (``CUDA_VISIBLE_DEVICES`` as
    the node's Ray was started with, ``None``: every GPU), of the task's first GPU
    ``gpu_ids[0]`` (Ray's id: an entry of ``visible``, or the GPU's number when unset)."""
    first = str(gpu_ids[0])
    if visible is None or not visible.strip():
        return int(first)
    listed = [v.strip() for v in visible.split(",")]
    return listed.index(first) if first in listed else int(first)


def _release_gpu_memory() -> None:
    """Free what the finished job left in torch's CUDA caching allocator (no-op without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    import gc

    gc.collect()  # a method's modules and tensors may sit in reference cycles
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _retire_worker() -> bool:
    """Make Ray end this worker once the current task's result is stored, exactly as on the
    last call of a ``max_calls`` function (Ray counts calls per function and exits the worker,
    after replying, when the count reaches ``max_calls``). True if arranged; False if this
    Ray's internals differ, then the worker stays (the next job may see a broken CUDA state).
    """
    try:
        fam: Any = ray._private.worker.global_worker.function_actor_manager
        infos: dict[Any, Any] = fam._function_execution_info
        counts: dict[Any, int] = fam._num_task_executions
        done = False
        for fid, info in list(infos.items()):
            if getattr(info, "max_calls", 0) == GPU_MAX_CALLS and fid in counts:
                counts[fid] = GPU_MAX_CALLS - 1  # this call's increment reaches max_calls
                done = True
        return done
    except Exception:  # a private Ray structure: never fail a job over it
        log.warning("could not retire this Ray worker after a failed GPU job", exc_info=True)
        return False


def _new_clock() -> Any:
    """A :class:`JobClock` on the driver's own node (soft: anywhere if that node has no
    room), so losing a worker node does not lose the clock."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        here = ray.get_runtime_context().get_node_id()
        strategy: Any = NodeAffinitySchedulingStrategy(node_id=here, soft=True)
    except Exception:  # e.g. Ray Client: no node of its own; let Ray place it
        strategy = "DEFAULT"
    return JobClock.options(scheduling_strategy=strategy).remote()  # type: ignore[attr-defined]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


#: ``max_calls`` of GPU tasks: reused workers, retired early by :func:`_retire_worker` (a
#: number no worker reaches otherwise; Ray only counts calls of functions with a limit).
GPU_MAX_CALLS = 1_000_000
# reused workers keep the data cache warm; their OpenMP threads wait passively (WORKER_ENV)
_cpu_task = ray.remote(max_calls=0, runtime_env={"env_vars": dict(WORKER_ENV)})(run_in_worker)
# GPU jobs run in reused workers too (their own pool: a runtime_env of their own). Ray is told
# not to narrow CUDA_VISIBLE_DEVICES per task: a CUDA context, once made, cannot follow that
# variable to another GPU, which is why each GPU job on a multi-GPU node used to get a fresh
# process (max_calls=1, 2.4 s instead of 0.7 s per short job). run_in_worker selects the
# task's GPU by index instead.
_gpu_task = ray.remote(
    max_calls=GPU_MAX_CALLS,
    runtime_env={"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
                              **WORKER_ENV}},
)(run_in_worker)
# One GPU job per process, Ray narrowing CUDA_VISIBLE_DEVICES to it: RayRunner(
# reuse_gpu_workers=False), the baseline of bench/bench_scheduling.py --gpu-reuse.
_gpu_task_fresh = ray.remote(max_calls=1)(run_in_worker)


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


@dataclass
class _InFlight:
    job: Job
    submitted: float
    started: float | None = None  # driver's monotonic clock when the worker began
    attempt: int = 0  # the starts the clock had counted when ``started`` was taken
    key: str = ""  # this submission's name on the clock (default: the job id)

    @property
    def clock_key(self) -> str:
        return self.key or self.job.job_id


def _object_store_bytes() -> int:
    mb = int(os.environ.get("OCCBENCH_RAY_OBJECT_STORE_MB", DEFAULT_OBJECT_STORE_MB))
    return max(mb, 80) * 2**20  # Ray refuses less than ~75 MiB


def init_local_ray(num_cpus: int | None = None, num_gpus: int | None = None,
                   object_store_mb: int | None = None,
                   system_config: Mapping[str, Any] | None = None) -> None:
    """Start an embedded, quiet local Ray sized to this machine (no dashboard, no worker logs).

    ``system_config``: extra Ray system settings (e.g. ``memory_usage_threshold``, a fraction
    of node memory above which Ray's memory monitor kills the newest task).
    """
    store = object_store_mb * 2**20 if object_store_mb else _object_store_bytes()
    # A private instance on this machine: Ray's notice that it generated an auth token for it
    # is noise on every `occbench run`.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # address="local": always a new instance, never a cluster that `ray start` (or a test's
    # simulated cluster) left recorded in /tmp/ray
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
             object_store_memory=store, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=True,
             # Tasks killed by Ray's memory monitor are retried on their own budget, which is
             # unlimited by default: cap it so an always-OOM job ends as a recorded failure.
             _system_config={"task_oom_retries": OOM_RETRIES, **(system_config or {})})


#: Seconds to wait for a TCP connection to a cluster address before giving up: Ray itself
#: retries "Failed to connect to GCS" for a long time.
CONNECT_TIMEOUT_S = 5.0


def _reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """``None`` when ``host:port`` accepts a TCP connection, else why not."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def join_cluster(address: str) -> None:
    """``ray.init(address)`` that fails fast with a :class:`RunnerError` naming the fix: an
    address nothing listens on, ``auto`` with no cluster, ``ray://`` without ``ray[client]``."""
    import importlib.util

    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://")
    if client and importlib.util.find_spec("grpc") is None:
        raise RunnerError(f"--address {address} uses Ray Client, which needs ray[client]: "
                          "pip install 'occbench[cluster]'")
    if address == "auto":
        # "auto" reads RAY_ADDRESS or the address a `ray start` recorded in /tmp/ray: a cluster
        # that has gone since would make ray.init retry for minutes, so check it first
        try:
            from ray._private.services import canonicalize_bootstrap_address

            hostport = str(canonicalize_bootstrap_address("auto") or "")
        except ConnectionError as exc:
            raise RunnerError(f"--address auto: no running Ray cluster found ({exc}); start one "
                              "(`ray start --head`) or leave --address out to run on this "
                              "machine") from exc
        except Exception:  # a private Ray helper: if it moved, let ray.init decide
            hostport = ""
    if hostport and hostport != "auto":
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise RunnerError(f"--address {address!r}: expected auto, HOST:PORT (the GCS "
                              "port, 6379 by default) or ray://HOST:PORT (10001)")
        why = _reachable(host.strip("[]"), int(port))
        if why is not None:
            raise RunnerError(f"--address {address}: cannot reach a Ray cluster at {hostport} "
                              f"({why}); start one "
                              f"there (`ray start --head`), fix --address, or leave --address "
                              "out to run on this machine")
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunnerError(f"--address {address}: {first}; start a cluster (`ray start --head`) "
                          "or leave --address out to run on this machine") from exc


class RayRunner(Runner):
    """Runs each job as a Ray task; see the module docstring for placement and faults.

    ``address``: ``None`` starts an embedded local Ray (shut down by :meth:`close`); ``"auto"``
    or ``"ray://HOST:PORT"`` connects to a running cluster. If Ray is already initialised in
    this process (tests, notebooks) that instance is used and left running.
    ``device``: ``"auto"`` (default) gives GPU jobs the GPUs their method declares when the
    cluster has GPUs and runs them on CPU otherwise; ``"cpu"`` never requests GPUs; ``"cuda"``
    requires them (a job no node can host is recorded as failed, not left waiting).
    ``max_concurrent``: most jobs in flight (default: the cluster's CPU count).
    ``max_retries``: retries of a job whose worker or node died.
    ``sealed``: ``"auto"`` (default), ``"require"`` or ``"off"``: each task starts the sandbox
    on its node (see :mod:`occbench.harness.run.sandbox`).
    ``default_time_limit_s``: limit of jobs without one of their own (0: none).
    ``reuse_gpu_workers``: True (default) runs GPU jobs in reused workers that pick their
    task's GPU by index; False gives each GPU job a fresh process (the old behaviour, kept for
    comparison: ``bench/bench_scheduling.py --gpu-reuse``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_concurrent: int | None = None,
                 device: str = "auto", max_retries: int = 2, num_cpus: int | None = None,
                 num_gpus: int | None = None, sealed: str = "auto",
                 default_time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
                 reuse_gpu_workers: bool = True) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        self.address = address
        self.max_concurrent = max_concurrent
        self.device = device
        self.max_retries = max_retries
        self._submissions = itertools.count()
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.sealed = sealed  # "auto" | "require" | "off": each task seals on its own node
        self.default_time_limit_s = default_time_limit_s
        self._owns_ray = False
        self._clock: Any | None = None
        self._inflight: dict[Any, _InFlight] = {}
        self._cancel = threading.Event()
        self._gpu_task = _gpu_task if reuse_gpu_workers else _gpu_task_fresh

    def running(self) -> int:
        return len(self._inflight)

    def cancel(self) -> bool:
        self._cancel.set()  # seen by the loop within one poll (_POLL_S)
        return True

    # -- cluster -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start or join Ray (idempotent)."""
        if ray.is_initialized():
            return
        if self.address is None:
            init_local_ray(self.num_cpus, self.num_gpus)
        else:
            join_cluster(self.address)
        self._owns_ray = True

    @staticmethod
    def nodes() -> list[dict[str, float]]:
        """Total resources of each alive node (``CPU``, ``GPU``, ``memory`` in bytes, ...)."""
        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]

    def task_options(self, job: Job, nodes: Sequence[Mapping[str, float]]
                     ) -> tuple[dict[str, Any], str | None]:
        """Ray options for ``job`` and, if no node can ever host it, why (else ``None``).

        CPU and memory requests are capped at the largest node (a 4-CPU method still runs on a
        2-core laptop, using all of it); GPU requests are not capped.
        """
        res = resources_of(job)
        max_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        max_mem = max((n.get("memory", 0.0) for n in nodes), default=0.0)
        has_gpu = any(n.get("GPU", 0.0) > 0 for n in nodes)
        gpus = float(res.gpus)
        if self.device == "cpu" or (self.device == "auto" and not has_gpu):
            gpus = 0.0
        opts: dict[str, Any] = {
            "num_cpus": min(float(res.cpus), max_cpu) if max_cpu else float(res.cpus),
            "num_gpus": gpus,
            "max_retries": self.max_retries,
            "retry_exceptions": False,  # a method's exception is a result, not a fault
        }
        mem = int(res.memory_mb) * 2**20
        if mem > 0 and max_mem:
            opts["memory"] = min(mem, int(max_mem))
        if gpus > 0:
            fits = [n for n in nodes if n.get("GPU", 0.0) >= gpus]
            if not fits:
                biggest = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
                return opts, (f"method {job.method!r} needs {gpus:g} GPU(s) per job but the "
                              f"largest node has {biggest:g}; use --device auto or cpu to run it "
                              "on CPU, or add a GPU node")
        return opts, None

    def _method_blob(self, job: Job) -> bytes | None:
        """The method class, pickled by value, if it was registered at run time."""
        entry = registry.methods.entry(job.method)
        if not entry.source.startswith("<runtime"):
            return None
        mod = sys.modules.get(entry.obj.__module__)
        by_value = mod is not None and not entry.obj.__module__.startswith("occbench.")
        # cloudpickle's by-value registry is process-wide: two drivers in one process (threads)
        # would unregister each other's module mid-dump, or twice ("not registered")
        with _BY_VALUE_LOCK:
            if by_value:
                cloudpickle.register_pickle_by_value(mod)
            try:
                return bytes(cloudpickle.dumps(entry.obj))
            finally:
                if by_value:
                    cloudpickle.unregister_pickle_by_value(mod)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None:
        if not jobs:
            return
        self.connect()
        nodes = self.nodes()
        cap = self.max_concurrent or max(1, int(sum(n.get("CPU", 0.0) for n in nodes)))
        if any(self.time_limit(j) for j in jobs) and self._clock is None:
            self._clock = _new_clock()
        blobs: dict[str, bytes | None] = {}
        queue = list(jobs)
        inflight: dict[Any, _InFlight] = {}
        self._inflight = inflight
        self._cancel.clear()
        last_clock = 0.0
        try:
            while queue or inflight:
                if self._cancel.is_set():  # second Ctrl-C: kill the running jobs, stop
                    for ref in inflight:
                        ray.cancel(ref, force=True)
                    return
                while queue and len(inflight) < cap and not stopped():
                    job = queue.pop(0)
                    if not claim(job):
                        continue
                    try:
                        opts, infeasible = self.task_options(job, nodes)
                    except Exception as exc:  # a method whose resources_for() is broken
                        done(job, failed_output(job, type(exc).__name__,
                                                f"resources_for() failed: {exc}", 0.0,
                                                origin="method"))
                        continue
                    if infeasible:
                        done(job, failed_output(job, "Infeasible", infeasible, 0.0))
                        continue
                    if job.method not in blobs:
                        blobs[job.method] = self._method_blob(job)
                    fn = self._gpu_task if opts["num_gpus"] > 0 else _cpu_task
                    clock = self._clock if self.time_limit(job) else None
                    # one key per submission (a rerun of the same job counts afresh)
                    key = f"{job.job_id}.{next(self._submissions)}"
                    ref = fn.options(**opts).remote(job, RootHandle(data_root), self.device,
                                                   blobs[job.method], clock, self.sealed,
                                                   self.max_retries, key)
                    inflight[ref] = _InFlight(job, time.monotonic(), key=key)
                if stopped():
                    queue.clear()
                if not inflight:
                    continue
                refs = list(inflight)
                ready, _ = ray.wait(refs, num_returns=1, timeout=_POLL_S)
                if ready and len(refs) > 1:  # and every other one done by now: one loop each
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    item = inflight.pop(ref)
                    done(item.job, self._result(ref, item))
                now = time.monotonic()
                if self._clock is not None and now - last_clock >= 4 * _POLL_S:
                    last_clock = now
                    self._check_time_limits(inflight, done)
        except KeyboardInterrupt:  # interrupted: cancel (kill) the running jobs
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
        finally:
            self._inflight = {}

    def _result(self, ref: Any, item: _InFlight) -> JobOutput:
        job = item.job
        wall = round(time.monotonic() - (item.started or item.submitted), 3)
        try:
            out: JobOutput = ray.get(ref)
            return out
        except ray.exceptions.TaskCancelledError:
            return failed_output(job, "Cancelled", "the job was cancelled", wall)
        except ray.exceptions.OutOfMemoryError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            res = resources_of(job)
            return failed_output(
                job, "OutOfMemory",
                f"Ray's memory monitor killed the job's worker each time it ran (node memory "
                f"above its threshold; {first[:200]}); the method declares "
                f"memory_mb={res.memory_mb:g}: declare what it really needs in its Resources, "
                "or run fewer jobs at once (--max-concurrent)", wall)
        except (ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError,
                ray.exceptions.ObjectLostError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return failed_output(
                job, "WorkerDied",
                f"the worker running the job died ({type(exc).__name__}: {first[:300]}); gave up "
                f"after {self.max_retries} retries", wall)
        except ray.exceptions.RayTaskError as exc:  # our wrapper failed (e.g. unpicklable job)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            out = failed_output(job, type(cause).__name__, str(cause).splitlines()[0][:500]
                                if str(cause) else repr(cause), wall)
            if out.error is not None:
                out.error["traceback"] = str(exc)
            return out
        except ray.exceptions.RayError as exc:
            return failed_output(job, type(exc).__name__, str(exc)[:500], wall)

    def _check_time_limits(self, inflight: dict[Any, _InFlight], done: DoneFn) -> None:
        limited = {ref: it for ref, it in inflight.items() if self.time_limit(it.job)}
        if not limited or self._clock is None:
            return
        try:
            starts = ray.get(self._clock.starts.remote(
                [it.clock_key for it in limited.values()]), timeout=10)
        except ray.exceptions.GetTimeoutError:
            return
        except ray.exceptions.RayError as exc:
            # The clock is gone: its node was lost (RayActorError), or the memory monitor
            # killed it to save a hog's node (OutOfMemoryError), or it is unreachable. A new
            # clock for new jobs; the running ones count from now (their limit may run a
            # little long, never short). The grid goes on either way.
            log.warning("the job clock was lost (%s); restarting it", type(exc).__name__)
            self._clock = _new_clock()
            now = time.monotonic()
            for it in limited.values():  # the new clock counts afresh
                it.started = now if it.started is None else it.started
                it.attempt = 0
            starts = {}
        now = time.monotonic()
        for ref, it in limited.items():
            n = starts.get(it.clock_key, 0)
            if n > it.attempt:  # started, or started again by Ray's retry: its limit anew
                it.started, it.attempt = now, n
            limit = float(self.time_limit(it.job) or 0)
            if it.started is not None and now - it.started > limit:
                ray.cancel(ref, force=True)
                inflight.pop(ref)
                done(it.job, timeout_output(it.job, limit, round(now - it.started, 3),
                                            " and was stopped"))

    def close(self) -> None:
        if self._clock is not None and ray.is_initialized():
            ray.kill(self._clock)
        self._clock = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


# --------------------------------------------------------------------------------------------
# Ray Tune (used by occbench.harness.run.sweep, which itself never imports ray)
# --------------------------------------------------------------------------------------------


def _tune_trial(config: dict[str, Any], method: str, method_blob: bytes | None,
                objective_args: tuple[Any, ...]) -> None:
    """A Tune function trainable: report the sweep's validation objective for ``config``."""
    from occbench.harness.run.sweep import validation_objective
    from ray import tune

    if method_blob is not None and method not in registry.methods:
        registry.methods.register(cloudpickle.loads(method_blob),
                                  source="<runtime, shipped by the driver>")
    dev = "cuda" if ray.get_gpu_ids() and _cuda_available() else "cpu"
    try:
        metrics = validation_objective(*objective_args, dev, config)
        metrics["error"] = None
    except Exception as exc:  # a bad config is a result (NaN objective), not a crash
        metrics = {"val_auc": float("nan"), "error": f"{type(exc).__name__}: {exc}"[:500]}
    metrics["device"] = dev
    tune.report(metrics)


def tune_search(*, method: str, search: Mapping[str, tuple[str, Sequence[Any]]],
                num_samples: int, seed: int, objective_args: tuple[Any, ...],
                resources: Resources, max_concurrent: int | None = None, name: str = "sweep",
                device: str = "auto") -> list[dict[str, Any]]:
    """Run one Tune trial per config drawn from ``search`` and return what each reported.

    ``search`` maps a parameter to ``(kind, values)`` with kind ``grid``, ``choice``,
    ``uniform`` or ``loguniform``; grids are crossed, random ones drawn ``num_samples`` times
    (per grid point) with ``seed``. Each dict has ``trial_id``, ``config`` and the metrics of
    :func:`occbench.harness.run.sweep.validation_objective`.
    """
    import shutil
    import tempfile

    # The legacy console reporter honours verbose=0 (the new one prints a banner per sweep).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    owns = not ray.is_initialized()
    if owns:
        init_local_ray()
    kinds = {"grid": tune.grid_search, "choice": tune.choice,
             "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    space = {k: kinds[kind](list(v)) for k, (kind, v) in search.items()}
    nodes = RayRunner.nodes()
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    gpus = 0.0 if device == "cpu" or not has_gpu else float(resources.gpus)
    max_cpu = max((n.get("CPU", 0.0) for n in nodes), default=1.0)
    trial_res = {"cpu": min(float(resources.cpus), max_cpu), "gpu": gpus}
    probe = Job(method, {}, "", "", {}, "", "", None, "", 0, "image")
    blob = RayRunner()._method_blob(probe)
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, method=method, method_blob=blob,
                             objective_args=objective_args), trial_res)
    storage = tempfile.mkdtemp(prefix="occbench-tune-")
    try:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples, max_concurrent_trials=max_concurrent,
                search_alg=BasicVariantGenerator(random_state=seed), reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
        )
        grid = tuner.fit()
        out: list[dict[str, Any]] = []
        for i in range(len(grid)):
            r = grid[i]
            m = dict(r.metrics or {})
            keep = {k: m.get(k) for k in ("val_auc", "val_auc_items", "val_time_s",
                                          "pseudo_anomalies", "error", "device")}
            if r.error is not None and not keep.get("error"):
                keep["error"] = f"{type(r.error).__name__}: {r.error}"[:500]
            cfg = {k: v for k, v in (r.config or {}).items() if k in search}
            out.append({"trial_id": str(m.get("trial_id", r.path.rsplit("/", 1)[-1])),
                        "config": cfg, **keep})
        return sorted(out, key=lambda d: d["trial_id"])
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if owns:
            ray.shutdown()


def resources_of(job: Job) -> Resources:
    """What the job's method declares for these parameters."""
    cls = registry.methods.get(job.method)
    res = cls(**job.method_params).resources_for()
    if not isinstance(res, Resources):
        raise TypeError(f"method {job.method!r}: resources_for() returned {res!r}, "
                        "not occbench.harness.api.Resources")
    return res


__all__ = ["DEFAULT_OBJECT_STORE_MB", "RayRunner", "init_local_ray", "resources_of",
           "run_in_worker", "tune_search"]

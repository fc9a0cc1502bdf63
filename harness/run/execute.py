"""The job as a pure function, run in a worker process that never sees test labels.

``execute_job(job, data_root, device)`` loads the dataset's training and (unlabelled) test split,
fits the method, scores the test split, checks the output and returns raw scores plus the
provenance record. Runners (serial, Ray) only decide *where* this runs; the driver computes the
metrics with the labels it alone loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from occbench.harness import registry
from occbench.harness.api import (
    Context,
    Data,
    DatasetSplit,
    ImageData,
    LabelAccessError,
    Method,
    VideoData,
    labels_blocked,
)
from occbench.harness.run.capture import (
    CappedHandler,
    CappedLog,
    capture_fds,
    job_logger,
    release_job_logger,
)

__all__ = ["JobOutput", "LabelAccessError", "RootHandle", "ScoreError", "enter_worker",
           "execute_group", "execute_job", "group_jobs", "label_guard", "run_method",
           "scrubbed_environ"]
from occbench.harness.run.spec import Job, canonical_json, make_dataset


class ScoreError(ValueError):
    """A method returned scores that break the contract."""


@dataclass
class JobOutput:
    """What a job hands back to the driver.

    ``log``: what the method logged (``context.logger``) and printed (fd 1 and 2), capped
    (:mod:`occbench.harness.run.capture`). ``error`` (failed jobs): ``type``, ``message``,
    ``traceback`` and ``origin``: ``"method"`` (the method's own code raised: deterministic, so
    never retried, not even by a rerun unless asked), ``"data"`` (loading the dataset failed),
    ``"runner"`` (time limit, worker killed, out of memory, cancelled, no node fits) or
    ``"harness"`` (the driver could not score or store it).
    """

    job_id: str
    status: str  # "ok" | "failed" | "timeout"
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # "" → (N,) for images
    provenance: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    error: dict[str, str] | None = None
    #: epoch -> raw scores (same layout as ``raw``) the method reported with Context.snapshot
    snapshots: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------

_PACKAGES = ("occbench", "numpy", "torch", "scikit-learn", "scipy", "pandas", "ray")


@lru_cache(maxsize=1)
def static_provenance() -> dict[str, Any]:
    """What does not change between jobs of one process: versions, git SHA, hardware."""
    versions: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_sha": git_sha(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def plugin_provenance(job: Job) -> dict[str, dict[str, str | None]]:
    """The distribution (pip package) and version that provide the job's method and dataset,
    e.g. ``{"method": {"name": "ocsvm", "package": "occbench", "version": "0.1.0"}, ...}``
    (``static_provenance`` knows only occbench's own dependencies)."""
    out: dict[str, dict[str, str | None]] = {}
    for role, reg, name in (("method", registry.methods, job.method),
                            ("dataset", registry.datasets, job.dataset)):
        source = reg.source_of(name)  # from the entry point: the plugin is not imported here
        if source is None:
            continue
        out[role] = {"name": name, "package": source, "version": _dist_version(source)}
    return out


@lru_cache(maxsize=256)
def _dist_version(dist: str) -> str | None:
    # cached per process, like static_provenance's versions: importlib.metadata parses the
    # distribution's METADATA on every call (two per job: a quarter of a no-op job's time in
    # the worker)
    return registry.dist_version(dist)


def git_sha() -> str | None:
    """The commit of the occbench source tree, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def gpu_info(device: str) -> dict[str, Any]:
    if not device.startswith("cuda") or "torch" not in sys.modules:
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    idx = torch.device(device).index or 0
    return {"gpu": torch.cuda.get_device_name(idx), "cuda": torch.version.cuda,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(idx) / 2**20, 1)}


class PeakRSS:
    """This process's peak resident memory during a block (bytes; ``peak_mb`` in MiB).

    A thread samples ``/proc/self/statm`` every ``interval`` s; if the kernel's lifetime
    high-water mark (``ru_maxrss``) rose during the block, the peak was that value exactly, so
    a spike between two samples is not missed. (In a reused worker a lower high-water mark set
    by an earlier job leaves only the samples.)
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = _rss_bytes()
        self._maxrss0 = _maxrss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss0:
            self.peak = max(self.peak, maxrss)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def _maxrss_bytes() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def memory_warnings(peak_mb: float, declared_mb: float) -> list[str]:
    """A warning when the job's peak resident memory (MiB) exceeds what its method declares
    (``Resources.memory_mb``), else nothing."""
    if declared_mb and peak_mb > declared_mb:
        return [f"peak memory {peak_mb:.0f} MiB is above the {declared_mb:g} MiB the method "
                "declares (Resources.memory_mb): declare what it needs, or a scheduler may put "
                "more jobs on a machine than fit"]
    return []


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: lifetime peak is the best we have
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------------------------
# Label isolation
# --------------------------------------------------------------------------------------------

#: Jobs run inside this: every Dataset.test_labels raises (see api.labels_blocked).
label_guard = labels_blocked


# --------------------------------------------------------------------------------------------
# Output checks
# --------------------------------------------------------------------------------------------


def normalise_scores(method: Method, test: Data, out: Any) -> dict[str, np.ndarray]:
    """Check a method's output against the contract and return ``{video_id: float64 array}``."""
    name = type(method).name
    if isinstance(test, ImageData):
        arr = np.asarray(out, dtype=np.float64) if not isinstance(out, dict) else None
        if arr is None or arr.ndim != 1:
            raise ScoreError(f"method {name!r} must return a 1-D array of scores for images, got "
                             f"{type(out).__name__} {getattr(arr, 'shape', '')}")
        if len(arr) != len(test):
            raise ScoreError(f"method {name!r} returned {len(arr)} scores for {len(test)} images")
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ScoreError(f"method {name!r} returned {bad} non-finite scores (NaN/inf) "
                             f"of {len(arr)}")
        return {"": arr}
    assert isinstance(test, VideoData)
    if not isinstance(out, dict):
        raise ScoreError(f"method {name!r} must return {{video_id: scores}} for video, got "
                         f"{type(out).__name__}")
    missing = [v for v in test.video_ids if v not in out]
    extra = [v for v in out if v not in test.video_ids]
    if missing or extra:
        raise ScoreError(f"method {name!r}: scores missing for videos {missing}, unknown {extra}")
    before, after = type(method).temporal_context
    res: dict[str, np.ndarray] = {}
    for v in test.videos:
        arr = np.asarray(out[v.video_id], dtype=np.float64)
        if arr.shape != (len(v),):
            raise ScoreError(f"method {name!r}: video {v.video_id!r} has {len(v)} frames but "
                             f"{arr.shape} scores")
        if np.isinf(arr).any():
            raise ScoreError(f"method {name!r}: video {v.video_id!r} has infinite scores")
        nan = np.isnan(arr)
        if nan.any():
            idx = np.flatnonzero(nan)
            inner = idx[(idx >= before) & (idx < len(v) - after)]
            if len(inner):
                raise ScoreError(
                    f"method {name!r}: video {v.video_id!r} has NaN scores at frames "
                    f"{inner[:5].tolist()}...; NaN is allowed only in the first {before} and "
                    f"last {after} frames (declared temporal_context)"
                )
        res[v.video_id] = arr
    return res


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


_controller: tuple[int, Any] | None = None  # (len(sys.modules) at the scan, controller)


def threadpool_controller() -> Any:
    """This process's ``threadpoolctl.ThreadpoolController``, reused between jobs.

    Building one scans every loaded shared library (``threadpool_limits`` does it on each
    call: the issue measured 2.4 ms of a no-op job's 3.0 ms in the worker). The scan is
    redone only when modules were imported since, because a new BLAS/OpenMP library (torch,
    a plugin's extension) arrives with an import; the limits themselves are applied afresh on
    every use, so they are the same as before.
    """
    global _controller
    n = len(sys.modules)
    if _controller is None or _controller[0] != n:
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        _controller = (len(sys.modules), ctl)  # the scan itself may import
    return _controller[1]


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` BLAS/OpenMP/torch threads: the CPUs the method declared.

    Thread counts change floating-point summation order, so fixing them to the declared
    resources makes scores identical whichever runner (serial or Ray) executes the job.
    The libraries are found by :func:`threadpool_controller` (one scan per process, not per
    job).
    """
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_controller().limit(limits=n):
            yield
    finally:
        if torch is not None and old is not None:
            torch.set_num_threads(old)


class RootHandle:
    """The data root as handed to a worker: :meth:`take` returns it once and forgets it.

    Runners pass one of these instead of the plain string, so that once the worker has loaded
    the data no frame above the method (the executor's call item, Ray's task arguments) still
    holds the data root.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def take(self) -> str | None:
        v, self._value = self._value, None
        return v

    def __reduce__(self) -> tuple[Any, ...]:
        return (RootHandle, (self._value,))


def _take_root(data_root: str | Path | RootHandle | None) -> str | None:
    if isinstance(data_root, RootHandle):
        return data_root.take()
    return None if data_root is None else str(data_root)


def _root_key(root: str | None) -> str | None:
    # the split caches are keyed by a digest of the data root: their keys outlive the load
    import hashlib

    return None if root is None else hashlib.sha256(root.encode()).hexdigest()[:16]


_roots: dict[str, str | None] = {}  # root key -> root, only while a load is in progress


@contextmanager
def _root_for_load(root: str | None) -> Iterator[str | None]:
    key = _root_key(root)
    if key is not None:
        _roots[key] = root
    try:
        yield key
    finally:
        _roots.pop(key or "", None)


@lru_cache(maxsize=4)
def _load_split(dataset: str, params_json: str, root_key: str | None,
                normal_class: str | None) -> DatasetSplit:
    # cached per worker process: a grid's jobs on one dataset decode it once
    import json

    ds = make_dataset(dataset, json.loads(params_json), _roots.get(root_key or ""))
    return ds.load(normal_class)


@lru_cache(maxsize=2)
def _load_auxiliary(dataset: str, root_key: str | None) -> ImageData:
    # cached per worker process like _load_split: an intruder pool is read once per worker
    ds = make_dataset(dataset, {}, _roots.get(root_key or ""))
    return ImageData(np.ascontiguousarray(ds.auxiliary_images()))


def load_split(dataset: str, params: dict[str, Any], root: str | None,
               normal_class: str | None) -> DatasetSplit:
    """One dataset split, through this process's split cache (keyed by a digest of ``root``)."""
    import json

    with _root_for_load(root) as key:
        return _load_split(dataset, json.dumps(params, sort_keys=True), key, normal_class)


_last_load: dict[str, bool] = {"cached": False}


def snapshot_scores(method: Method, test: Data, ctx: Context) -> dict[int, dict[str, np.ndarray]]:
    """The snapshots a method reported through ``ctx.snapshot``, checked like its final scores."""
    return {e: normalise_scores(method, test, s) for e, s in sorted(ctx.snapshots.items())}


def load_inputs(job: Job, root: str | None) -> tuple[DatasetSplit, dict[str, ImageData]]:
    """The job's unlabelled split and auxiliary images (cached per worker process)."""
    import json

    with _root_for_load(root) as key:
        hits = _load_split.cache_info().hits
        split = _load_split(job.dataset, json.dumps(job.dataset_params, sort_keys=True), key,
                            job.normal_class)
        # a queue of jobs on one dataset in one worker decodes it once: recorded per job
        _last_load["cached"] = _load_split.cache_info().hits > hits
        auxiliary = {role: _load_auxiliary(a["dataset"], key)
                     for role, a in job.auxiliary.items()}
    return split, auxiliary


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------

#: Environment variables that name the data root (the driver's; never a method's).
DATA_ROOT_ENV = ("OCCBENCH_DATA", "OCCBENCH_DATA_ROOT")


def _naming_root(root: str | None) -> list[str]:
    out = [k for k in DATA_ROOT_ENV if k in os.environ]
    if root:
        out += [k for k, v in os.environ.items() if root in v and k not in out]
    return out


@contextmanager
def scrubbed_environ(data_root: str | None) -> Iterator[None]:
    """Start worker processes inside this: their environment names no data root."""
    saved = {k: os.environ.pop(k) for k in _naming_root(data_root)}
    try:
        yield
    finally:
        os.environ.update(saved)


def enter_worker() -> None:
    """First step of a process that runs methods (serial worker, Ray worker).

    Test labels are refused for good (:func:`~occbench.harness.api.seal_labels`), and the
    command line and environment inherited from the driver are cleared of the data root.
    """
    from occbench.harness.api import seal_labels

    seal_labels()
    sys.argv[:] = sys.argv[:1] if sys.argv and "occbench" not in sys.argv[0] else ["occbench"]
    for k in _naming_root(None):
        os.environ.pop(k, None)


def prestart_sandbox(job: Job, device: str = "cpu", sealed: str | bool | None = "auto") -> None:
    """Start this worker's sealed process for ``job`` now (before any job's time limit runs)."""
    from occbench.harness.run import sandbox

    if sandbox.normalise_mode(sealed) == "off" or not sandbox.probe().ok:
        return
    with contextlib.suppress(sandbox.SandboxError):  # the job itself reports it
        runtime = sandbox._runtime_blob(job.method) is not None
        sandbox.sealed_process(sandbox.layout(job.method, None, runtime), device,
                               sandbox.probe())


# --------------------------------------------------------------------------------------------
# The method itself (shared by the sealed process and unsealed runs: same code, same scores)
# --------------------------------------------------------------------------------------------


def _probe_subset(test: Data) -> tuple[Data, Any] | None:
    """A reordered part of the test set, to see whether scores depend on the rest of it."""
    if isinstance(test, ImageData):
        if len(test) < 4:
            return None
        idx = np.arange(len(test))[::-2][:6]
        return ImageData(np.ascontiguousarray(test.images[idx])), idx
    assert isinstance(test, VideoData)
    if len(test.videos) < 2:
        return None
    v = min(test.videos, key=len)
    return VideoData((v,)), v.video_id


def job_threads(method: Method, given: int | None) -> int:
    """BLAS/OpenMP/torch threads for a job: ``given`` (the CPU cores the runner gave the job:
    all of the machine's for the serial runner, the CPUs Ray assigned for a Ray task), else the
    CPUs the method declares (its ``Resources.cpus``, at least 1)."""
    if given is not None and given >= 1:
        return int(given)
    return max(1, int(method.resources_for().cpus))


def run_method(method: Method, train: Data, test: Data, ctx: Context, logger: logging.Logger,
               threads: int | None = None
               ) -> tuple[dict[str, np.ndarray], Method, dict[str, Any]]:
    """Fit on ``train``, score ``test``; returns ``(raw scores, fitted method, provenance)``.

    ``threads``: CPU threads to run with (:func:`job_threads`; ``provenance["threads"]``).

    Also scores a reordered part of the test set again (after the real scores, so they are not
    affected): ``test_independent`` False means an item's score changed with the rest of the
    test set (a transductive method, marked on the board).
    """
    prov: dict[str, Any] = {}
    threads = job_threads(method, threads)
    prov["threads"] = threads
    with cpu_threads(threads):
        t_fit = time.perf_counter()
        fitted = method.fit(train, ctx)
        if fitted is not method:
            logger.warning("fit() did not return self; using the returned object")
            method = fitted
        prov["fit_time_s"] = round(time.perf_counter() - t_fit, 3)
        t_score = time.perf_counter()
        raw = normalise_scores(method, test, method.score(test, ctx))
        prov["score_time_s"] = round(time.perf_counter() - t_score, 3)
        sub = _probe_subset(test)
        prov["test_independent"] = None
        if sub is not None:
            try:
                part, where = sub
                # a context of its own: snapshots the probe reports are not the job's
                pctx = dataclasses.replace(ctx, snapshots={})
                again = normalise_scores(method, part, method.score(part, pctx))
                ref = raw[""][where] if isinstance(test, ImageData) else raw[where]
                got = again[""] if isinstance(test, ImageData) else again[where]
                prov["test_independent"] = bool(np.allclose(got, ref, rtol=1e-5, atol=1e-6,
                                                            equal_nan=True))
            except Exception as exc:  # the check is advisory; the job's scores stand
                logger.warning("test-independence check failed: %s: %s", type(exc).__name__, exc)
    prov["n_parameters"] = method.n_parameters()
    return raw, method, prov


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def execute_job(job: Job, data_root: str | Path | RootHandle | None = None,
                device: str = "cpu", sealed: str | bool | None = "auto",
                method_blob: bytes | None = None, threads: int | None = None,
                retries: int = 2) -> JobOutput:
    """Run one job: fit on normal training data, score the unlabelled test split.

    ``sealed``: ``"auto"`` (default) runs the method in the sealed process
    (:mod:`occbench.harness.run.sandbox`) when this machine can start one, else here with a
    warning in the job's log; ``"require"`` (or ``True``) fails the job when it cannot be
    sealed; ``"off"`` (or ``False``) runs the method in this process. The provenance says
    ``sealed`` (bool) and ``sealed_by``. ``method_blob``: a pickled method class the driver
    registered at run time (Ray ships it), for the sealed process. ``threads``: the CPU cores
    the runner gave the job (``None``: the CPUs its method declares; see :func:`job_threads`).
    ``retries``: how often a job whose sealed process was killed by a signal (the OOM killer,
    ``kill``) is run again in a fresh one, as the runners retry a killed worker; a sealed
    process that exits by itself is a result, not retried. The deaths are listed in
    ``provenance["worker_deaths"]``.

    Never raises for a method's fault: failures come back as ``status="failed"`` with the
    traceback and the error's ``origin`` (see :class:`JobOutput`), so the driver can record
    them. What the method logs and prints is captured, capped, into ``JobOutput.log``; a peak
    resident memory (of the process the method ran in) above the method's declared
    ``Resources.memory_mb`` is a string in ``provenance["warnings"]``.
    """
    from occbench.harness.run import sandbox
    from occbench.harness.run.capture import log_cap_bytes

    # sealed: the method's log arrives capped by the sealed process; this sink keeps it whole
    # plus 64 KiB of the worker's own lines (one cut, one note)
    sink = CappedLog(log_cap_bytes() + 2**16)
    handler = CappedHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = job_logger(job.job_id, handler)
    prov: dict[str, Any] = {**static_provenance(), "device": device, "pid": os.getpid(),
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    origin = "data"  # what a failure is blamed on: the loading phase, then the method
    t0 = time.perf_counter()
    root = _take_root(data_root)
    del data_root
    mode = sandbox.normalise_mode(sealed)
    probe = sandbox.probe() if mode != "off" else sandbox.Probe(False, why="--unsealed")
    seal = probe.ok
    prov.update(sealed=seal, sealed_by=probe.by if seal else None)
    mem = PeakRSS()

    def failed(error: dict[str, str]) -> JobOutput:
        prov["wall_time_s"] = round(time.perf_counter() - t0, 3)
        _memory_check(prov, None if seal else mem.peak_mb)
        return JobOutput(job.job_id, "failed", {}, prov, sink.text(), error)

    try:
        with capture_fds(sink) as write_out, label_guard(), mem:
            handler.write = write_out  # records in order with what the method prints
            if not seal:
                prov["unsealed_reason"] = probe.why
                if mode == "require":
                    raise sandbox.SandboxUnavailable(
                        f"sealed execution was required but is unavailable: {probe.why}")
                if mode == "auto":
                    logger.warning("running UNSEALED: %s", probe.why)
            if device.startswith("cuda") and not seal:
                import torch

                torch.cuda.reset_peak_memory_stats()
            t_load = time.perf_counter()
            split, auxiliary = load_inputs(job, root)
            prov["load_time_s"] = round(time.perf_counter() - t_load, 3)
            prov["plugins"] = plugin_provenance(job)
            prov["data_cached"] = _last_load["cached"]
            origin = "method"
            if seal:
                deaths: list[str] = []
                while True:
                    try:
                        raw, sprov, mlog = sandbox.run_sealed(job, split, auxiliary, device,
                                                              root, probe, method_blob, threads)
                        break
                    except sandbox.SealedProcessDied as exc:
                        deaths.append(exc.how)
                        prov["worker_deaths"] = deaths
                        if exc.by_signal and len(deaths) <= retries:
                            # killed from outside: a fault, not a result; the next call starts
                            # a fresh sealed process
                            logger.warning("the sealed process was %s; running the job again "
                                           "in a fresh one", exc.how)
                            continue
                        tried = (f"; {len(deaths)} attempts ({'; '.join(deaths)})"
                                 if len(deaths) > 1 else "")
                        return failed({"type": "WorkerDied", "message": f"{exc}{tried}",
                                       "traceback": "", "origin": "runner"})
                    except sandbox.SealedJobError as exc:
                        prov.update(exc.provenance)
                        write_out(exc.log.encode("utf-8", errors="replace"))
                        return failed({**exc.error,
                                       "origin": exc.error.get("origin", "method")})
                root = None
                snaps = sprov.pop("_snapshots", {})
                prov.update(sprov)
                write_out(mlog.encode("utf-8", errors="replace"))
            else:
                root = None  # not reachable from the method's frames
                with tempfile.TemporaryDirectory(prefix="occbench-job-") as wd:
                    raw, prov_m = _run_here(job, split, auxiliary, device, logger, Path(wd),
                                            threads)
                snaps = prov_m.pop("_snapshots", {})
                prov.update(prov_m)
        if not seal:
            prov["peak_rss_mb"] = mem.peak_mb
            prov.update(gpu_info(device))
        prov["wall_time_s"] = round(time.perf_counter() - t0, 3)
        _memory_check(prov, None)
        return JobOutput(job.job_id, "ok", raw, prov, sink.text(), snapshots=snaps)
    except Exception as exc:
        return failed({"type": type(exc).__name__, "message": str(exc),
                       "traceback": traceback.format_exc(), "origin": origin})
    finally:
        handler.write = None
        release_job_logger(logger, handler)


def _memory_check(prov: dict[str, Any], peak_mb: float | None) -> None:
    """Add ``provenance["warnings"]`` when the peak memory is above the declared one."""
    if peak_mb is not None and "peak_rss_mb" not in prov:
        prov["peak_rss_mb"] = peak_mb
    declared = (prov.get("resources") or {}).get("memory_mb") or 0
    found = memory_warnings(float(prov.get("peak_rss_mb") or 0), float(declared))
    if found:
        prov["warnings"] = [*prov.get("warnings", []), *found]


def _run_here(job: Job, split: DatasetSplit, auxiliary: dict[str, ImageData], device: str,
              logger: logging.Logger, wd: Path, threads: int | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    # the unsealed path: the method runs in this process, from a frame without the data root
    cls = registry.methods.get(job.method)
    method = cls(**job.method_params)
    ctx = Context(seed=job.seed, device=device, logger=logger, workdir=wd, fast=job.fast,
                  auxiliary=auxiliary)
    raw, fitted, prov = run_method(method, split.train, split.test, ctx, logger, threads)
    prov["_snapshots"] = snapshot_scores(fitted, split.test, ctx)  # popped by execute_job
    # what the method declares (sealed runs report it from inside the sandbox)
    prov.setdefault("resources", dataclasses.asdict(method.resources_for()))
    return raw, prov


# --------------------------------------------------------------------------------------------
# Stacked execution: several jobs, one fit
# --------------------------------------------------------------------------------------------


def data_key(job: Job) -> tuple[Any, ...]:
    """What jobs must share to be fitted on the same training data."""
    return (job.dataset, canonical_json(job.dataset_params), job.dataset_version,
            job.dataset_fingerprint, job.normal_class, job.fast, job.modality)


def group_jobs(jobs: Sequence[Job], max_size: int) -> list[list[Job]]:
    """Jobs in units of at most ``max_size`` that can be fitted as one stacked computation.

    Jobs group when they share the training data (:func:`data_key`) and their methods'
    :meth:`Method.stack_key` is equal and not ``None`` (same architecture and schedule; seeds and
    variants differ). Order: each unit where its first job was; every job appears once; a job
    whose method does not stack is a unit of one.
    """
    units: list[list[Job]] = []
    open_unit: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        key = None
        if max_size > 1:
            sk = registry.methods.get(job.method)(**job.method_params).stack_key()
            key = None if sk is None else (data_key(job), sk)
        unit = open_unit.get(key) if key is not None else None
        if unit is None or len(unit) >= max_size:
            unit = []
            units.append(unit)
            if key is not None:
                open_unit[key] = unit
        unit.append(job)
    return units


def execute_group(jobs: Sequence[Job], data_root: str | Path | RootHandle | None = None,
                  device: str = "cpu", sealed: str | bool | None = "auto",
                  threads: int | None = None) -> list[JobOutput]:
    """Run jobs of one :func:`group_jobs` unit: load the data once, fit all methods with
    ``fit_stacked``, score each on its own. One :class:`JobOutput` per job, in order.

    Each output is what :func:`execute_job` would give for that job (its own log, scores,
    snapshots; the same job, hence the same id and run record) except provenance: ``group`` (the
    job ids fitted together) and ``group_size``; ``fit_time_s`` and ``wall_time_s`` are the
    whole group's (so a job's share of the device time is ``wall_time_s / group_size``).
    A fit that raises fails every job of the group; a score that raises fails only its job.

    Not sealed yet: the stacked fit runs in this (worker) process, like ``sealed="off"``; with
    ``sealed="require"`` every job of the group fails (run those with ``group=1``), with
    ``"auto"`` each job's log says it ran unsealed and its provenance says why. ``threads``: as
    for :func:`execute_job` (``None``: the most any of the group's methods declares).
    """
    from occbench.harness.run import sandbox

    if len(jobs) == 1:
        return [execute_job(jobs[0], data_root, device, sealed, threads=threads)]
    root = _take_root(data_root)
    del data_root
    mode = sandbox.normalise_mode(sealed)
    if len({data_key(j) for j in jobs}) != 1:
        raise ValueError("execute_group: the jobs do not share their training data")
    bufs = [io.StringIO() for _ in jobs]
    loggers = []
    handlers = []
    for job, buf in zip(jobs, bufs, strict=True):
        h = logging.StreamHandler(buf)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg = job_logger(job.job_id, h)
        loggers.append(lg)
        handlers.append(h)
    ids = [j.job_id for j in jobs]
    base: dict[str, Any] = {**static_provenance(), "device": device, "pid": os.getpid(),
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "group": ids, "group_size": len(jobs), "sealed": False,
                            "sealed_by": None,
                            "unsealed_reason": "a stacked group (fit_stacked) runs in the worker "
                                               "process; sealed execution is per job (group=1)"}
    provs = [dict(base) for _ in jobs]
    outs: list[JobOutput | None] = [None] * len(jobs)
    t0 = time.perf_counter()

    def fail_all(exc: BaseException) -> list[JobOutput]:
        err = {"type": type(exc).__name__, "message": str(exc),
               "traceback": traceback.format_exc()}
        res = []
        for i, job in enumerate(jobs):
            provs[i]["wall_time_s"] = round(time.perf_counter() - t0, 3)
            res.append(outs[i] or JobOutput(job.job_id, "failed", {}, provs[i],
                                            bufs[i].getvalue(), dict(err)))
        return res

    try:
        if mode == "require":
            raise sandbox.SandboxUnavailable(
                "sealed execution was required, but stacked groups run unsealed: run these "
                "jobs with group=1")
        if mode == "auto":
            for lg in loggers:
                lg.warning("running UNSEALED: %s", base["unsealed_reason"])
        with label_guard(), PeakRSS() as mem, \
                tempfile.TemporaryDirectory(prefix="occbench-group-") as wd:
            if device.startswith("cuda"):
                import torch

                torch.cuda.reset_peak_memory_stats()
            t_load = time.perf_counter()
            inputs = [load_inputs(jobs[0], root)]
            cached = _last_load["cached"]
            inputs += [load_inputs(job, root) for job in jobs[1:]]  # the split is cached now
            root = None  # not reachable from the methods' frames
            split = inputs[0][0]
            methods, ctxs = [], []
            for job, lg, (_, aux) in zip(jobs, loggers, inputs, strict=True):
                methods.append(registry.methods.get(job.method)(**job.method_params))
                jd = Path(wd) / job.job_id
                jd.mkdir()
                ctxs.append(Context(seed=job.seed, device=device, logger=lg, workdir=jd,
                                    fast=job.fast, auxiliary=aux))
            keys = {m.stack_key() for m in methods}
            if None in keys or len(keys) != 1:
                raise ValueError(f"execute_group: methods {[j.method for j in jobs]} do not "
                                 "share one stack_key(); group them with group_jobs()")
            load_s = round(time.perf_counter() - t_load, 3)
            threads = max(job_threads(m, threads) for m in methods)
            with cpu_threads(threads):
                t_fit = time.perf_counter()
                type(methods[0]).fit_stacked(methods, split.train, ctxs)
                fit_s = round(time.perf_counter() - t_fit, 3)
                for i, (m, c) in enumerate(zip(methods, ctxs, strict=True)):
                    provs[i].update(load_time_s=load_s, data_cached=cached, threads=threads,
                                    fit_time_s=fit_s, plugins=plugin_provenance(jobs[i]))
                    t_score = time.perf_counter()
                    try:
                        raw = normalise_scores(m, split.test, m.score(split.test, c))
                        snaps = snapshot_scores(m, split.test, c)
                    except Exception as exc:
                        provs[i]["wall_time_s"] = round(time.perf_counter() - t0, 3)
                        outs[i] = JobOutput(jobs[i].job_id, "failed", {}, provs[i],
                                            bufs[i].getvalue(),
                                            {"type": type(exc).__name__, "message": str(exc),
                                             "traceback": traceback.format_exc()})
                        continue
                    provs[i]["score_time_s"] = round(time.perf_counter() - t_score, 3)
                    provs[i]["n_parameters"] = m.n_parameters()
                    outs[i] = JobOutput(jobs[i].job_id, "ok", raw, provs[i], "",
                                        snapshots=snaps)
        wall = round(time.perf_counter() - t0, 3)
        gpu = gpu_info(device)
        res = []
        for i, out in enumerate(outs):
            assert out is not None
            if out.status == "ok":
                out.provenance.update(peak_rss_mb=mem.peak_mb, wall_time_s=wall, **gpu)
                out.log = bufs[i].getvalue()
            res.append(out)
        return res
    except Exception as exc:
        return fail_all(exc)
    finally:
        for lg, h in zip(loggers, handlers, strict=True):
            release_job_logger(lg, h)

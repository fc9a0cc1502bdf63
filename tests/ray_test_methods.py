"""Test-only methods for the Ray runner tests (registered at run time, shipped to workers).

They are registered with ``registry.methods.register`` inside the tests; the Ray runner pickles
run-time-registered classes by value, so Ray workers need not import this module.
Scores are cheap image statistics (higher = brighter image), never meant to be good detectors.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from occbench.harness.api import Context, Data, ImageData, Method, Modality, Resources


def _mean_score(test: Data) -> np.ndarray:
    assert isinstance(test, ImageData)
    return test.images.reshape(len(test), -1).mean(axis=1).astype(np.float64)


class SleepProbe(Method):
    """Sleeps ``sleep_s`` in fit and logs when it ran; declares ``gpus`` GPUs (may be fake)."""

    name = "ray-probe"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, sleep_s: float = 0.0, gpus: float = 0.0, cpus: float = 0.25,
                 tag: str = "") -> None:
        self.sleep_s = sleep_s
        self.gpus = gpus
        self.cpus = cpus
        self.tag = tag

    def resources_for(self) -> Resources:
        return Resources(cpus=self.cpus, gpus=self.gpus, memory_mb=64)

    def fit(self, train: Data, context: Context) -> SleepProbe:
        t0 = time.time()
        time.sleep(self.sleep_s)
        context.logger.info("interval %.4f %.4f pid %d cuda %s", t0, time.time(), os.getpid(),
                            os.environ.get("CUDA_VISIBLE_DEVICES"))
        return self

    def score(self, test: Data, context: Context) -> Any:
        return _mean_score(test)


class PidSleeper(Method):
    """Appends its pid to ``pid_file`` then sleeps ``sleep_s`` in the first ``slow_attempts``
    attempts (later attempts finish at once), so a test can kill the worker mid-job."""

    name = "ray-pid-sleeper"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, pid_file: str = "", sleep_s: float = 30.0, slow_attempts: int = 1,
                 gpus: float = 0.0) -> None:
        self.pid_file = pid_file
        self.sleep_s = sleep_s
        self.slow_attempts = slow_attempts
        self.gpus = gpus

    def resources_for(self) -> Resources:
        return Resources(cpus=1, gpus=self.gpus, memory_mb=64)

    def fit(self, train: Data, context: Context) -> PidSleeper:
        p = Path(self.pid_file)
        with p.open("a") as f:
            f.write(f"{os.getpid()}\n")
        attempt = len(p.read_text().split())
        if attempt <= self.slow_attempts:
            time.sleep(self.sleep_s)
        return self

    def score(self, test: Data, context: Context) -> Any:
        return _mean_score(test)


class LateDeath(Method):
    """Appends its pid to ``pid_file``; its first attempt runs ``die_after_s`` seconds and then
    kills its own worker (SIGKILL, as the OOM killer would); a later attempt runs ``sleep_s``
    seconds and succeeds."""

    name = "ray-late-death"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, pid_file: str = "", die_after_s: float = 5.0,
                 sleep_s: float = 5.0) -> None:
        self.pid_file = pid_file
        self.die_after_s = die_after_s
        self.sleep_s = sleep_s

    def resources_for(self) -> Resources:
        return Resources(cpus=1, memory_mb=64)

    def fit(self, train: Data, context: Context) -> LateDeath:
        p = Path(self.pid_file)
        with p.open("a") as f:
            f.write(f"{os.getpid()}\n")
        if len(p.read_text().split()) <= 1:
            time.sleep(self.die_after_s)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.sleep_s)
        return self

    def score(self, test: Data, context: Context) -> Any:
        return _mean_score(test)


class Boom(Method):
    """Raises in fit: a method error, which must be recorded once and never retried."""

    name = "ray-boom"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})
    resources: ClassVar[Resources] = Resources(cpus=0.5, gpus=0, memory_mb=64)

    def __init__(self, count_file: str = "") -> None:
        self.count_file = count_file

    def fit(self, train: Data, context: Context) -> Boom:
        with open(self.count_file, "a") as f:
            f.write("x\n")
        raise RuntimeError("boom: deliberate failure")

    def score(self, test: Data, context: Context) -> Any:  # pragma: no cover - never reached
        return _mean_score(test)


class MemoryHog(Method):
    """Appends its pid to ``pid_file``, then allocates 64 MiB at a time (pages written) until
    the machine's used memory, as Ray's memory monitor reads it, passes ``until_used_mb``
    (0: no target), ``hog_mb`` are held, or under 1 GiB would be left; then holds it for
    ``hold_s``: a job Ray's memory monitor must kill, whatever other processes do meanwhile."""

    name = "ray-memory-hog"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})
    resources: ClassVar[Resources] = Resources(cpus=0.5, gpus=0, memory_mb=64)  # an understatement

    def __init__(self, pid_file: str = "", hog_mb: int = 4096, hold_s: float = 30.0,
                 until_used_mb: int = 0) -> None:
        self.pid_file = pid_file
        self.hog_mb = hog_mb
        self.hold_s = hold_s
        self.until_used_mb = until_used_mb

    def fit(self, train: Data, context: Context) -> MemoryHog:
        from ray._private import utils as ray_utils  # the figures the monitor reads

        with open(self.pid_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        total = ray_utils.get_system_memory()
        chunks = []
        while len(chunks) * 64 < self.hog_mb:
            used = ray_utils.get_used_memory()
            if self.until_used_mb and used > self.until_used_mb * 2**20:
                break
            if total - used < 2**30:  # never push the machine itself out of memory
                break
            chunks.append(np.ones(64 * 2**17))  # 64 MiB of float64, written so it is resident
            time.sleep(0.02)
        time.sleep(self.hold_s)
        return self

    def score(self, test: Data, context: Context) -> Any:  # pragma: no cover - killed first
        return _mean_score(test)

class PathProbe(Method):
    """Logs whether the worker's working directory (the driver's, under Ray) is importable."""

    name = "ray-path-probe"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def fit(self, train: Data, context: Context) -> PathProbe:
        import sys

        cwd = os.path.abspath(os.curdir)
        on_path = any(os.path.abspath(p or os.curdir) == cwd for p in sys.path)
        context.logger.info("cwd %s on_path %s", cwd, on_path)
        return self

    def score(self, test: Data, context: Context) -> Any:
        return _mean_score(test)


class Chatty(Method):
    """Writes ``log_mb`` MiB through ``context.logger`` and ``print_mb`` MiB to stdout (and
    ``print_mb`` to stderr), between FIRST/LAST marker lines: output that must stay out of
    Ray's session folder."""

    name = "ray-chatty"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0, memory_mb=64)

    def __init__(self, log_mb: float = 0.0, print_mb: float = 0.0) -> None:
        self.log_mb = log_mb
        self.print_mb = print_mb

    def fit(self, train: Data, context: Context) -> Chatty:
        import sys

        line = "y" * 1000
        context.logger.info("FIRST-LOG-LINE")
        print("FIRST-PRINT-LINE", flush=True)
        for _ in range(int(self.log_mb * 2**20 / 1000)):
            context.logger.info(line)
        for _ in range(int(self.print_mb * 2**20 / 1001)):
            print(line)
            print(line, file=sys.stderr)
        # stdout to a pipe is block-buffered: flush it first, or up to 8 KiB of its "y" lines
        # would arrive after LAST-LOG-LINE (the log keeps arrival order) and push it out of the
        # 4 KiB tail the test reads
        sys.stdout.flush()
        sys.stderr.flush()
        context.logger.info("LAST-LOG-LINE")
        print("LAST-PRINT-LINE", flush=True)
        return self

    def score(self, test: Data, context: Context) -> Any:
        return _mean_score(test)


class GpuProbe(Method):
    """Declares ``gpus`` (fake GPUs in tests); scores each test image by its distance to the
    training mean. ``fail=True`` raises what a broken CUDA context raises (simulated)."""

    name = "ray-gpu-probe"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image"})

    def __init__(self, gpus: float = 0.25, fail: bool = False, tag: str = "") -> None:
        self.gpus = gpus
        self.fail = fail
        self.tag = tag

    def resources_for(self) -> Resources:
        return Resources(cpus=0.5, gpus=self.gpus, memory_mb=64)

    def fit(self, train: Data, context: Context) -> GpuProbe:
        assert isinstance(train, ImageData)
        if self.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered "
                               "(simulated by the test)")
        self.mean_ = train.images.reshape(len(train), -1).astype(np.float64).mean(axis=0)
        return self

    def score(self, test: Data, context: Context) -> Any:
        assert isinstance(test, ImageData)
        x = test.images.reshape(len(test), -1).astype(np.float64)
        return np.sqrt(((x - self.mean_) ** 2).sum(axis=1))


ALL = (SleepProbe, PidSleeper, LateDeath, Boom, MemoryHog, PathProbe, Chatty, GpuProbe)

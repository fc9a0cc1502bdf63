"""Deliberately broken (and one good) method plugins for the conformance and runner tests."""

from __future__ import annotations

import os
import signal
import time
from typing import ClassVar

import numpy as np
from occbench.harness import registry
from occbench.harness.api import (
    Context,
    Data,
    ImageData,
    Method,
    Modality,
    Resources,
    VideoData,
)


class _Base(Method):
    modalities: ClassVar[frozenset[Modality]] = frozenset({"image", "video"})

    def fit(self, train: Data, context: Context) -> Method:
        self.mean_ = float(np.mean(train.images) if isinstance(train, ImageData)
                           else np.mean([v.frames.mean() for v in train.videos]))
        return self

    def _per_item(self, test: Data) -> dict[str, np.ndarray] | np.ndarray:
        if isinstance(test, ImageData):
            return np.abs(test.images.reshape(len(test), -1).mean(1) - self.mean_)
        assert isinstance(test, VideoData)
        return {v.video_id: np.abs(v.frames.reshape(len(v), -1).mean(1) - self.mean_)
                for v in test.videos}

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        return self._per_item(test)


class MeanDistance(_Base):
    """A correct, trivial method: distance of the mean intensity to the training mean."""

    name = "test-mean"

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset


class NaNScores(_Base):
    name = "test-nan"

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        s = self._per_item(test)
        if isinstance(s, dict):
            return {k: np.full_like(v, np.nan) for k, v in s.items()}
        s = s.astype(float)
        s[0] = np.nan
        return s


class WrongLength(_Base):
    name = "test-wrong-length"

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        s = self._per_item(test)
        return {k: v[:-1] for k, v in s.items()} if isinstance(s, dict) else s[:-1]


class ReadsLabels(_Base):
    """Peeks at the test labels through the dataset registry."""

    name = "test-reads-labels"

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        labels = registry.datasets.get("digits")().test_labels("0")
        context.logger.info("cheating with %d labels", len(labels.per_video[""]))
        return self._per_item(test)


class Nondeterministic(_Base):
    name = "test-nondeterministic"

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        s = self._per_item(test)
        noise = np.random.default_rng().random
        if isinstance(s, dict):
            return {k: v + noise(len(v)) for k, v in s.items()}
        return s + noise(len(s))


class Transductive(_Base):
    """Normalises scores by the test set's own statistics (uses the test set)."""

    name = "test-transductive"

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        s = self._per_item(test)
        if isinstance(s, dict):
            allv = np.concatenate(list(s.values()))
            return {k: (v - allv.mean()) / (allv.std() + 1e-9) for k, v in s.items()}
        return (s - s.mean()) / (s.std() + 1e-9)


class SlowOrDie(_Base):
    """Sleeps ``sleep`` seconds in fit; with ``die=True`` kills its own process (a crash)."""

    name = "test-slow"

    def __init__(self, sleep: float = 0.0, die: bool = False, pidfile: str = "") -> None:
        self.sleep = sleep
        self.die = die
        self.pidfile = pidfile

    def fit(self, train: Data, context: Context) -> Method:
        if self.pidfile:
            with open(self.pidfile, "w") as f:
                f.write(str(os.getpid()))
        if self.die:
            os.kill(os.getpid(), 9)
        time.sleep(self.sleep)
        return super().fit(train, context)


class Attempts(_Base):
    """Appends its pid to ``pid_file`` on each attempt; dies by SIGKILL on the first
    ``kill_attempts`` attempts (``exit_code``: exits with that status instead), then sleeps
    ``sleep`` seconds: a job whose worker dies from outside, or by its own hand."""

    name = "test-attempts"

    def __init__(self, pid_file: str = "", kill_attempts: int = 0, exit_code: int = 0,
                 sleep: float = 0.0) -> None:
        self.pid_file = pid_file
        self.kill_attempts = kill_attempts
        self.exit_code = exit_code
        self.sleep = sleep

    def fit(self, train: Data, context: Context) -> Method:
        with open(self.pid_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        with open(self.pid_file) as f:
            attempt = len(f.read().split())
        if attempt <= self.kill_attempts:
            if self.exit_code:
                os._exit(self.exit_code)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.sleep)
        return super().fit(train, context)


class Chatty(_Base):
    """Writes ``log_mb`` MiB through ``context.logger`` and ``print_mb`` MiB to stdout, plus a
    line to fd 2 and one from a child process, each framed by FIRST/LAST marker lines."""

    name = "test-chatty"

    def __init__(self, log_mb: float = 0.0, print_mb: float = 0.0) -> None:
        self.log_mb = log_mb
        self.print_mb = print_mb

    def fit(self, train: Data, context: Context) -> Method:
        import subprocess
        import sys

        line = "x" * 1000
        context.logger.info("FIRST-LOG-LINE")
        print("FIRST-PRINT-LINE", flush=True)
        os.write(2, b"FD2-LINE\n")
        subprocess.run([sys.executable, "-c", "print('CHILD-LINE')"], check=True)
        for _ in range(int(self.log_mb * 2**20 / 1000)):
            context.logger.info(line)
        for _ in range(int(self.print_mb * 2**20 / 1001)):
            print(line)
        context.logger.info("LAST-LOG-LINE")
        print("LAST-PRINT-LINE", flush=True)
        return super().fit(train, context)


class MemoryUse(_Base):
    """Holds ``alloc_mb`` MiB (pages written) during fit while declaring ``declared_mb``."""

    name = "test-memory"

    def __init__(self, alloc_mb: int = 0, declared_mb: int = 2048) -> None:
        self.alloc_mb = alloc_mb
        self.declared_mb = declared_mb

    def resources_for(self) -> Resources:
        return Resources(cpus=1, gpus=0, memory_mb=self.declared_mb)

    def fit(self, train: Data, context: Context) -> Method:
        block = np.ones(self.alloc_mb * 2**17)  # float64: 8 bytes each, all written
        time.sleep(0.3)
        del block
        return super().fit(train, context)


class AuxPool(_Base):
    """Scores by distance to the mean intensity of an auxiliary image dataset ``pool`` (a
    registered dataset name, handed over by the harness), not of its own training data."""

    name = "test-aux-pool"

    def __init__(self, pool: str = "") -> None:
        self.pool = pool

    def auxiliary_datasets(self) -> dict[str, str]:
        return {"pool": self.pool} if self.pool else {}

    def fit(self, train: Data, context: Context) -> Method:
        super().fit(train, context)
        if self.pool:
            self.mean_ = float(np.mean(context.auxiliary["pool"].images))
            context.logger.info("pool %s shape %s", self.pool,
                                context.auxiliary["pool"].images.shape)
        return self


ALL = [MeanDistance, NaNScores, WrongLength, ReadsLabels, Nondeterministic, Transductive,
       SlowOrDie, Attempts, Chatty, MemoryUse]


def register_all() -> None:
    for cls in [*ALL, AuxPool]:
        if cls.name not in registry.methods:
            registry.methods.register(cls, source="tests")


register_all()

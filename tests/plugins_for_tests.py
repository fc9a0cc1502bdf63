"""Deliberately broken (and one good) method plugins for the conformance and runner tests."""

from __future__ import annotations

import os
import time
from typing import ClassVar

import numpy as np
from occbench.harness import registry
from occbench.harness.api import Context, Data, ImageData, Method, Modality, VideoData


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
       SlowOrDie]


def register_all() -> None:
    for cls in [*ALL, AuxPool]:
        if cls.name not in registry.methods:
            registry.methods.register(cls, source="tests")


register_all()

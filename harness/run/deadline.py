"""Run as many unfinished jobs as fit before a deadline (a GPU slot of fixed length).

* :class:`CostModel` — how many seconds a job will take: learned from earlier runs (their
  ``provenance.wall_time_s``, divided by ``group_size`` for jobs fitted stacked), per method,
  dataset and parameters, scaled linearly by the ``epochs`` parameter; without any history of
  the same kind, ``overhead_s + epochs * per_epoch_s`` (e.g. from ``bench/bench_ae3d.py``).
  Every estimate is multiplied by ``margin`` (1.2).
* :class:`DeadlineRunner` — wraps a :class:`~occbench.harness.run.runner.SerialRunner` (one worker
  process for the whole queue) and never starts a job, or a stacked unit of jobs, whose estimate
  does not fit in the time left; it caps each started job's time limit at the deadline, and
  updates the cost model with every finished job. Jobs it did not start are listed in
  ``not_started`` (nothing is written for them; a later slot runs them).

``bench/ped2_gpu_run.py`` is the command line around it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from occbench.harness.run.execute import JobOutput, group_jobs
from occbench.harness.run.runner import ClaimFn, DoneFn, Runner, SerialRunner, StopFn
from occbench.harness.run.spec import Job, canonical_json

#: method parameters that do not change what a job costs per epoch (left out of the cost key)
_FREE_PARAMS = ("epochs", "snapshot_every", "device", "gpus")


def epochs_of(params: Mapping[str, Any]) -> float:
    """The job's ``epochs`` parameter (1 for methods without one): the cost scales with it."""
    e = params.get("epochs", 1)
    return float(e) if isinstance(e, (int, float)) and e > 0 else 1.0


def _key(job: Job) -> tuple[str, str, str]:
    params = {k: v for k, v in job.method_params.items() if k not in _FREE_PARAMS}
    return job.method, job.dataset, canonical_json(params)


@dataclass
class CostModel:
    """Seconds per job, from measured runs; see the module docstring.

    ``per_epoch_s``/``overhead_s``: the estimate without history (``per_epoch_s`` None: use
    ``default_s`` for such a job). ``margin``: safety factor on every estimate.
    """

    default_s: float = 600.0
    per_epoch_s: float | None = None
    overhead_s: float = 0.0
    margin: float = 1.2
    #: cost key -> seconds per epoch measured (job share of a stacked unit)
    seen: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    #: dataset -> seconds per epoch of any method there (the fallback before the defaults)
    seen_dataset: dict[str, list[float]] = field(default_factory=dict)

    def observe(self, job: Job, seconds: float) -> None:
        """Record that ``job`` took ``seconds`` (its share, when fitted stacked)."""
        per_epoch = max(seconds, 0.0) / epochs_of(job.method_params)
        self.seen.setdefault(_key(job), []).append(per_epoch)
        self.seen_dataset.setdefault(job.dataset, []).append(per_epoch)

    def learn(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Observe every successful run record (``RunStore.records()``); returns how many."""
        n = 0
        for rec in records:
            prov = rec.get("provenance") or {}
            wall = prov.get("wall_time_s")
            if rec.get("status", "ok") != "ok" or not isinstance(wall, (int, float)):
                continue
            try:
                job = Job.from_dict(rec["job"])
            except (KeyError, TypeError):
                continue
            self.observe(job, float(wall) / max(int(prov.get("group_size") or 1), 1))
            n += 1
        return n

    def estimate(self, job: Job) -> float:
        """Expected seconds for ``job`` alone (margin included)."""
        epochs = epochs_of(job.method_params)
        for hist in (self.seen.get(_key(job)), self.seen_dataset.get(job.dataset)):
            if hist:
                return self.margin * statistics.median(hist) * epochs
        if self.per_epoch_s is not None:
            return self.margin * (self.overhead_s + self.per_epoch_s * epochs)
        return self.margin * self.default_s


@dataclass
class Skipped:
    job: Job
    estimate_s: float
    left_s: float


class DeadlineRunner(Runner):
    """Runs units (single jobs, or stacked groups of up to ``group``) while they fit.

    ``deadline`` is a ``time.time()`` instant; ``clock`` is injectable for tests.
    """

    def __init__(self, inner: SerialRunner, deadline: float, costs: CostModel,
                 group: int = 1, clock: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.name = inner.name  # run records say which runner executed them: the serial one
        self.deadline = deadline
        self.costs = costs
        self.group = group
        self.clock = clock
        self.not_started: list[Skipped] = []
        self.started: list[Job] = []

    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None:
        self.inner.deadline = self.deadline
        for unit in group_jobs(jobs, self.group):
            if stopped():
                break
            est = sum(self.costs.estimate(j) for j in unit)
            left = self.deadline - self.clock()
            if est > left:
                self.not_started += [Skipped(j, self.costs.estimate(j), left) for j in unit]
                continue  # a later, cheaper unit may still fit
            t0 = self.clock()
            n = len(unit)

            def done_and_learn(job: Job, out: JobOutput, t0: float = t0, n: int = n) -> None:
                if out.status == "ok":
                    self.costs.observe(job, (self.clock() - t0) / n)
                done(job, out)

            self.started += unit
            # the inner runner claims each job itself and fits the unit stacked when n > 1
            self.inner.group = max(n, 1)
            self.inner.run(unit, data_root, claim, done_and_learn, stopped)

    def close(self) -> None:
        self.inner.close()


__all__ = ["CostModel", "DeadlineRunner", "Skipped", "epochs_of"]

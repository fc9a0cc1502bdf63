"""Harness side of stacked training and GPU slots: grouping jobs, one worker for a queue, the
deadline runner. All on CPU with tiny models or fake methods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import plugins_for_tests  # noqa: F401
import pytest
from occbench.harness import registry
from occbench.harness.api import Context, Data, Method, Modality, VideoData
from occbench.harness.run.deadline import CostModel, DeadlineRunner
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.execute import execute_group, group_jobs
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import Job, expand, spec_from_dict
from occbench.harness.store.runstore import RunStore

REPO = Path(__file__).resolve().parents[1]
TOY = {"name": "toy-video", "params": {"n_train": 2, "n_test": 2, "n_frames": 24, "size": 16}}
#: 2 videos of 24 frames: 34 clips of 8 frames, 8 steps of 4 per epoch
AE = {"size": 16, "width": 0.125, "clip_len": 8, "epochs": 1, "score_batch_size": 8,
      "device": "cpu", "snapshot_every": 1}


@pytest.fixture(autouse=True)
def _one_thread_and_plugins(monkeypatch: pytest.MonkeyPatch) -> Any:
    import torch
    from occbench.harness.api import Resources
    from occbench.methods.video_ae import Ae3dMethod

    # the worker runs a job with the threads its method declares (2 for the video AEs): tiny
    # 3D convolutions run several times faster on one thread than on two busy cores
    monkeypatch.setattr(Ae3dMethod, "resources_for", lambda self: Resources(cpus=1))
    monkeypatch.setenv("OCCBENCH_PLUGIN_MODULES", "plugins_for_tests")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def jobs_of(methods: list[dict[str, Any]], seeds: list[int]) -> list[Job]:
    return expand(spec_from_dict({"name": "g", "seeds": seeds, "methods": methods,
                                  "datasets": [TOY]})).jobs


def test_group_jobs_by_data_and_stack_key() -> None:
    jobs = jobs_of([{"name": "ae3d", "params": AE},
                    {"name": "lcon-inside", "params": {**AE, "lam": 0.5}},
                    {"name": "ae3d", "label": "long", "params": {**AE, "epochs": 2}},
                    {"name": "test-mean"}], seeds=[0, 1])
    units = group_jobs(jobs, 3)
    names = [[(j.label or j.method, j.seed) for j in u] for u in units]
    # ae3d and lcon-inside share architecture and schedule; the 2-epoch ae3d does not; test-mean
    # has no stack key and stays alone; at most 3 per unit; each job exactly once
    assert names == [[("ae3d", 0), ("ae3d", 1), ("lcon-inside", 0)], [("lcon-inside", 1)],
                     [("long", 0), ("long", 1)], [("test-mean", 0)], [("test-mean", 1)]]
    assert group_jobs(jobs, 1) == [[j] for j in jobs]
    other = expand(spec_from_dict({"name": "g", "seeds": [0], "methods": [
        {"name": "ae3d", "params": AE}], "datasets": [{**TOY, "params": {**TOY["params"],
                                                                           "seed": 1}}]})).jobs
    assert len(group_jobs([jobs[0], *other], 4)) == 2  # other training data: never together
    with pytest.raises(ValueError, match="training data"):
        execute_group([jobs[0], *other])


def test_grouped_runs_are_the_separate_runs(tmp_path: Path) -> None:
    """Two jobs (variant differs) fitted as one stack and the same jobs run one by one: the
    same job ids and run records (job, protocol) and, to float tolerance, the same scores and
    metrics; only provenance says the group."""
    jobs = jobs_of([{"name": "ae3d", "params": AE}, {"name": "lntra-skip", "params": AE}],
                   seeds=[0])
    alone, grouped = RunStore(tmp_path / "alone"), RunStore(tmp_path / "grouped")
    s1 = run_jobs(jobs, alone, SerialRunner(in_process=True))
    s2 = run_jobs(jobs, grouped, SerialRunner(in_process=True, group=3))  # a unit of 2
    assert s1.ok == s2.ok == 2
    assert alone.job_ids() == grouped.job_ids() == sorted(j.job_id for j in jobs)
    for j in jobs:
        ra, rg = alone.record(j.job_id), grouped.record(j.job_id)
        assert ra["job"] == rg["job"] and ra["protocol"] == rg["protocol"]
        assert rg["provenance"]["group_size"] == 2
        assert sorted(rg["provenance"]["group"]) == sorted(x.job_id for x in jobs)
        assert "group_size" not in ra["provenance"]
        for k in ("auc_micro", "auc_macro"):
            assert rg["metrics"][k] == pytest.approx(ra["metrics"][k], abs=0.01)
        sa, sg = alone.scores(j.job_id), grouped.scores(j.job_id)
        np.testing.assert_allclose(sg["raw"], sa["raw"], atol=2e-3)  # -PSNR in dB
        assert f"occbench.job.{j.job_id}" in grouped.log(j.job_id)  # each job its own log


def test_group_snapshots_reach_the_job_output() -> None:
    jobs = jobs_of([{"name": "ae3d", "params": {**AE, "epochs": 2}}], seeds=[0, 1])
    outs = execute_group(jobs)
    assert [o.status for o in outs] == ["ok", "ok"], [o.error for o in outs]
    for o in outs:
        assert sorted(o.snapshots) == [1, 2]
        for vid, raw in o.raw.items():  # the last snapshot is the final model
            np.testing.assert_array_equal(o.snapshots[2][vid], raw)
        assert not np.array_equal(o.snapshots[1]["test_00"], o.raw["test_00"], equal_nan=True)
        assert o.provenance["group_size"] == 2 and o.provenance["data_cached"] in (True, False)


def test_queue_runs_in_one_worker_process_with_data_loaded_once(tmp_path: Path) -> None:
    """The serial runner's spawned worker runs the whole queue: same pid, and every job after
    the first finds the decoded split in the worker's cache."""
    jobs = jobs_of([{"name": "test-mean", "params": {"offset": o}} for o in (0.0, 1.0, 2.0)],
                   seeds=[0])
    store = RunStore(tmp_path / "s")
    runner = SerialRunner()
    try:
        assert run_jobs(jobs, store, runner).ok == 3
    finally:
        runner.close()
    provs = [store.record(j.job_id)["provenance"] for j in jobs]
    assert len({p["pid"] for p in provs}) == 1 and provs[0]["pid"] != os.getpid()
    assert [p["data_cached"] for p in provs] == [False, True, True]


# ---- the deadline runner ---------------------------------------------------------------------


class FakeClock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class Ticks(Method):
    """Fake job: advances the fake clock by ``cost_s`` in fit (no real time passes)."""

    name: ClassVar[str] = "test-ticks"
    modalities: ClassVar[frozenset[Modality]] = frozenset({"video"})

    def __init__(self, cost_s: float = 10.0, epochs: int = 1, tag: int = 0) -> None:
        self.cost_s, self.epochs, self.tag = cost_s, epochs, tag

    def fit(self, train: Data, context: Context) -> Method:
        CLOCK.now += self.cost_s
        return self

    def score(self, test: Data, context: Context) -> dict[str, np.ndarray]:
        assert isinstance(test, VideoData)
        return {v.video_id: np.linspace(0, 1, len(v)) for v in test.videos}


if Ticks.name not in registry.methods:
    registry.methods.register(Ticks, source="tests")


def tick_jobs(costs: list[float], epochs: int = 1) -> list[Job]:
    return jobs_of([{"name": "test-ticks", "params": {"cost_s": c, "epochs": epochs, "tag": i}}
                    for i, c in enumerate(costs)], seeds=[0])


def run_until(jobs: list[Job], store: RunStore, budget_s: float, costs: CostModel
              ) -> DeadlineRunner:
    # unsealed and in this process: the fake method advances this process's fake clock
    runner = DeadlineRunner(SerialRunner(in_process=True, sealed="off"), CLOCK.now + budget_s,
                            costs, clock=CLOCK)
    run_jobs(jobs, store, runner)
    return runner


def test_deadline_never_starts_a_job_that_cannot_finish(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    jobs = tick_jobs([10.0] * 5)
    runner = run_until(jobs, store, 35.0, CostModel(default_s=10.0, margin=1.2))
    # estimate 12 s each, 10 s taken: three start (at 0, 10, 20 s, each with >= 12 s left); the
    # fourth, with 5 s left, is not started, nor the fifth; they are left for the next slot and
    # not recorded as failed
    assert store.job_ids() == sorted(j.job_id for j in jobs[:3])
    assert [s.job for s in runner.not_started] == jobs[3:]
    assert store.failures() == []
    assert runner.inner.deadline == runner.deadline  # the worker's time limits are capped
    # the next slot resumes: the finished ones are done, and their measured cost is the estimate
    costs = runner.costs  # what the runner measured (fake clock): 10 s per job on toy-video
    assert costs.estimate(jobs[3]) == pytest.approx(12.0)  # x 1.2 margin
    assert CostModel().learn(store.records()) == 3  # a new slot learns from the store instead
    runner2 = run_until(jobs, store, 20.0, costs)
    assert len(store.job_ids()) == 4 and [s.job for s in runner2.not_started] == jobs[4:]


def test_deadline_skips_an_expensive_job_and_runs_a_cheaper_later_one(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    jobs = tick_jobs([5.0, 50.0, 5.0])
    costs = CostModel(margin=1.0)
    for j, sec in zip(jobs, (5.0, 50.0, 5.0), strict=True):  # measured in an earlier slot
        costs.observe(j, sec)
    runner = run_until(jobs, store, 20.0, costs)
    assert store.job_ids() == sorted([jobs[0].job_id, jobs[2].job_id])
    assert [s.job for s in runner.not_started] == [jobs[1]]


def test_cost_model_scales_by_epochs_and_splits_groups() -> None:
    one, = tick_jobs([1.0], epochs=10)
    long, = tick_jobs([1.0], epochs=60)
    costs = CostModel(default_s=999.0, margin=1.0)
    rec = {"status": "ok", "job": one.to_dict(),
           "provenance": {"wall_time_s": 300.0, "group_size": 3}}  # 3 stacked jobs in 300 s
    assert costs.learn([rec, {"status": "failed", "job": one.to_dict(), "provenance": {}}]) == 1
    assert costs.estimate(one) == pytest.approx(100.0)
    assert costs.estimate(long) == pytest.approx(600.0)  # 10 s per epoch x 60
    fresh = CostModel(per_epoch_s=7.0, overhead_s=40.0, margin=1.0)  # e.g. from the bench
    assert fresh.estimate(long) == pytest.approx(40.0 + 7.0 * 60)


def test_ped2_gpu_run_script_leaves_a_store(tmp_path: Path) -> None:
    """The slot script on a toy spec: all jobs within a generous deadline, none within 0 s."""
    spec = tmp_path / "toy.toml"
    spec.write_text('name = "toy"\nseeds = [0, 1]\n[[methods]]\nname = "test-mean"\n'
                    '[[datasets]]\nname = "toy-video"\n'
                    'params = { n_train = 2, n_test = 2, n_frames = 24, size = 16 }\n')
    env = {**os.environ, "OCCBENCH_PLUGIN_MODULES": "plugins_for_tests",
           "PYTHONPATH": str(REPO / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(REPO / "bench" / "ped2_gpu_run.py"), "--spec", str(spec),
           "--device", "cpu", "--in-process", "--default-s", "30"]
    none = subprocess.run([*cmd, "--store", str(tmp_path / "none"), "--deadline-s", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert none.returncode == 0, none.stderr
    assert "not started: 2" in none.stdout and RunStore(tmp_path / "none").job_ids() == []
    out = subprocess.run([*cmd, "--store", str(tmp_path / "all"), "--deadline-s", "600"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(RunStore(tmp_path / "all").job_ids()) == 2 and "ran 2" in out.stdout
    # a rerun with the finished store as --done runs nothing new
    again = subprocess.run([*cmd, "--store", str(tmp_path / "again"), "--done",
                            str(tmp_path / "all"), "--deadline-s", "600"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 to run" in again.stdout


@pytest.mark.parametrize("sealed", ["auto", "off"])
def test_job_snapshots_reach_the_job_output(sealed: str) -> None:
    """One job, sealed (where this machine can) or not: the per-epoch snapshots come back."""
    from occbench.harness.run.execute import execute_job

    job, = jobs_of([{"name": "ae3d", "params": {**AE, "epochs": 2}}], seeds=[0])
    out = execute_job(job, sealed=sealed)
    assert out.status == "ok", out.error
    assert sorted(out.snapshots) == [1, 2]
    for vid, raw in out.raw.items():
        np.testing.assert_array_equal(out.snapshots[2][vid], raw)

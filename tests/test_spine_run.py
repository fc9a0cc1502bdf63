"""End to end through the driver and the serial runner: store, resume, faults, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plugins_for_tests  # noqa: F401
import pytest
from occbench.harness.driver import run_jobs
from occbench.harness.export import export_store
from occbench.harness.runner import SerialRunner
from occbench.harness.spec import SpecError, expand, spec_from_dict
from occbench.harness.store import DiskFullError, RunStore, StoreError
from sklearn.metrics import roc_auc_score

PLUGIN_ENV = {"OCCBENCH_PLUGIN_MODULES": "plugins_for_tests"}


@pytest.fixture(autouse=True)
def _plugins_in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # spawned workers re-read the registry; this makes them import the test plugins too
    monkeypatch.setenv("OCCBENCH_PLUGIN_MODULES", "plugins_for_tests")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))


def small_spec(methods: list[dict], seeds: list[int] | None = None, **ds: object) -> dict:
    return {
        "name": "t", "seeds": seeds or [0],
        "methods": methods,
        "datasets": [{"name": "digits", "classes": ["0", "1"]},
                     {"name": "toy-video", "params": {"n_train": 2, "n_test": 2,
                                                      "n_frames": 30}, **ds}],
    }


def test_run_store_rerun_and_export(tmp_path: Path) -> None:
    spec = spec_from_dict(small_spec([{"name": "test-mean"}, {"name": "iforest"}], [0, 1]))
    plan = expand(spec)
    assert len(plan.jobs) == 2 * (2 + 1) * 2
    store = RunStore(tmp_path / "s")
    runner = SerialRunner(in_process=True)
    s1 = run_jobs(plan.jobs, store, runner)
    assert (s1.ok, s1.failed) == (12, 0)
    # rerunning the finished spec runs nothing
    s2 = run_jobs(expand(spec).jobs, store, runner)
    assert (s2.ran, s2.already_done) == (0, 12)
    # every record carries provenance and the protocol
    rec = store.record(plan.jobs[0].job_id)
    prov = rec["provenance"]
    for k in ("wall_time_s", "peak_rss_mb", "packages", "git_sha", "hostname", "cpu"):
        assert k in prov
    assert rec["protocol"]["id"] == rec["metrics"]["protocol"]
    # exported scores recompute the stored AUCs
    runs_p, scores_p = export_store(store, tmp_path / "exp", "parquet")
    scores = pd.read_parquet(scores_p)
    for jid in store.job_ids():
        r = store.record(jid)
        s = scores[(scores.job_id == jid) & scores.score.notna()]
        auc = roc_auc_score(s.label, s.score)
        stored = r["metrics"].get("auc", r["metrics"].get("auc_micro"))
        assert auc == pytest.approx(stored)
    assert len(pd.read_parquet(runs_p)) == 12


def test_unknown_names_fail_before_any_job(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="did you mean 'iforest'"):
        expand(spec_from_dict(small_spec([{"name": "iforrest"}])))
    bad_class = small_spec([{"name": "iforest"}])
    bad_class["datasets"][0]["classes"] = ["11"]
    with pytest.raises(SpecError, match=r"unknown classes \['11'\]"):
        expand(spec_from_dict(bad_class))
    with pytest.raises(SpecError, match="has no parameters"):
        expand(spec_from_dict(small_spec([{"name": "iforest", "params": {"n_trees": 3}}])))
    with pytest.raises(SpecError, match="unknown protocol"):
        expand(spec_from_dict(small_spec([{"name": "iforest"}], protocol="video-magic@1")))


def test_job_id_covers_what_changes_scores() -> None:
    base = expand(spec_from_dict(small_spec([{"name": "iforest"}]))).jobs[0]
    from dataclasses import replace

    assert replace(base, seed=1).job_id != base.job_id
    assert replace(base, method_version="2").job_id != base.job_id
    assert replace(base, dataset_fingerprint="x").job_id != base.job_id
    # the scoring protocol is derived from the raw scores, not part of what was computed
    assert replace(base, protocol="video-raw@2").job_id == base.job_id
    assert replace(base, label="display only").job_id == base.job_id


def test_failures_are_recorded_and_the_grid_goes_on(tmp_path: Path) -> None:
    spec = spec_from_dict(small_spec([{"name": "test-nan"}, {"name": "test-mean"}]))
    store = RunStore(tmp_path / "s")
    s = run_jobs(expand(spec).jobs, store, SerialRunner(in_process=True))
    assert s.ok == 3 and s.failed == 3
    fails = store.failures()
    assert len(fails) == 3
    assert all("non-finite" in f["error"]["message"] or "NaN" in f["error"]["message"]
               for f in fails)
    assert all(f["error"]["traceback"] for f in fails)


def test_reads_labels_fails_in_the_worker(tmp_path: Path) -> None:
    spec = spec_from_dict(small_spec([{"name": "test-reads-labels"}]))
    store = RunStore(tmp_path / "s")
    s = run_jobs(expand(spec).jobs[:1], store, SerialRunner())
    assert s.failed == 1
    assert store.failures()[0]["error"]["type"] == "LabelAccessError"


def test_killed_worker_and_timeout_are_recorded(tmp_path: Path) -> None:
    spec = small_spec([{"name": "test-slow", "params": {"die": True}},
                       {"name": "test-slow", "params": {"sleep": 30.0}},
                       {"name": "test-mean"}])
    spec["datasets"] = [{"name": "digits", "classes": ["0"], "time_limit_s": 8}]
    store = RunStore(tmp_path / "s")
    runner = SerialRunner()
    try:
        s = run_jobs(expand(spec_from_dict(spec)).jobs, store, runner)
    finally:
        runner.close()
    kinds = sorted(f["error"]["type"] for f in store.failures())
    assert kinds == ["TimeLimitExceeded", "WorkerDied"]
    assert s.ok == 1  # the grid went on after both


def test_disk_full_stops_cleanly_and_loses_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    spec = spec_from_dict(small_spec([{"name": "test-mean"}], [0, 1]))
    jobs = expand(spec).jobs
    store = RunStore(tmp_path / "s")
    import occbench.harness.store as store_mod

    real = store_mod._write_parquet
    calls = {"n": 0}

    def flaky(df, path):  # type: ignore[no-untyped-def]
        calls["n"] += path.name == "raw.parquet"
        if calls["n"] == 3 and path.name == "raw.parquet":  # the third run's raw scores
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(df, path)

    monkeypatch.setattr(store_mod, "_write_parquet", flaky)
    s = run_jobs(jobs, store, SerialRunner(in_process=True))
    assert s.stop_reason and "disk full" in s.stop_reason and "rerun" in s.stop_reason
    assert len(store.job_ids()) == 2  # the runs before the failure are intact
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]  # no debris
    monkeypatch.setattr(store_mod, "_write_parquet", real)
    s2 = run_jobs(jobs, store, SerialRunner(in_process=True))
    assert s2.ok == len(jobs) - 2 and len(store.job_ids()) == len(jobs)


def test_store_refuses_foreign_folder_and_merges(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an occbench store"):
        RunStore(tmp_path / "x").init()
    spec = spec_from_dict(small_spec([{"name": "test-mean"}], [0, 1]))
    jobs = expand(spec).jobs
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    run_jobs(jobs[:4], a, SerialRunner(in_process=True))
    run_jobs(jobs[2:], b, SerialRunner(in_process=True))
    m = RunStore(tmp_path / "m")
    assert m.merge_from(a) == (4, 0)
    assert m.merge_from(b) == (2, 2)
    assert set(m.job_ids()) == {j.job_id for j in jobs}
    assert isinstance(DiskFullError("x"), StoreError)


def _slow_grid_cli(tmp_path: Path, seeds: int, classes: int, sleep: float
                   ) -> tuple[list[str], dict[str, str]]:
    """An `occbench run` command line (and its environment) for a grid of sleeping jobs."""
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        f'name = "slow"\nseeds = {list(range(seeds))}\n[[methods]]\nname = "test-slow"\n'
        f'params = {{ sleep = {sleep} }}\n[[datasets]]\nname = "digits"\n'
        f'classes = {[str(c) for c in range(classes)]}\n'.replace("'", '"'))
    env = {**os.environ, "OCCBENCH_PLUGIN_MODULES": "plugins_for_tests",
           "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "occbench.harness", "run", str(spec_file), "--store",
           str(tmp_path / "s"), "--runner", "serial", "--no-board"]
    return cmd, env


def test_two_drivers_never_run_a_job_twice(tmp_path: Path) -> None:
    cmd, env = _slow_grid_cli(tmp_path, seeds=3, classes=2, sleep=0.4)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    store = RunStore(tmp_path / "s")
    assert len(store.job_ids()) == 6
    ran = [int(o.split("ran ")[1].split(" jobs")[0]) for o in outs]
    assert sum(ran) == 6, outs  # each job ran exactly once across both drivers


def test_interrupt_then_rerun_finishes_only_what_was_missing(tmp_path: Path) -> None:
    cmd, env = _slow_grid_cli(tmp_path, seeds=4, classes=3, sleep=0.5)
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - a file, not a pipe: orphans keep pipes
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    store = RunStore(tmp_path / "s")
    deadline = time.time() + 120
    while len(store.job_ids()) < 3 and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)  # the harshest stop: no cleanup at all
    p.wait(timeout=30)
    log.close()
    done_before = set(store.job_ids())
    assert 3 <= len(done_before) < 12
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ran {12 - len(done_before)} jobs" in out.stdout
    assert len(store.job_ids()) == 12
    for jid in done_before:  # earlier results untouched
        assert json.loads((store.runs_dir / jid / "record.json").read_text())["job_id"] == jid


def test_scores_deterministic_across_processes(tmp_path: Path) -> None:
    spec = spec_from_dict(small_spec([{"name": "iforest"}]))
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    run_jobs(expand(spec).jobs, a, SerialRunner())
    run_jobs(expand(spec).jobs, b, SerialRunner(in_process=True))
    for jid in a.job_ids():
        np.testing.assert_array_equal(a.scores(jid).raw, b.scores(jid).raw)


def test_spec_include_is_a_union_and_gpu_jobs_are_never_attempted_without_one(
        tmp_path: Path) -> None:
    from dataclasses import replace

    from occbench.harness.refresh import plan_refresh
    from occbench.harness.spec import SpecError, load_spec, split_requires_gpu

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.toml").write_text(
        'name = "a"\nseeds = [0]\n[[methods]]\nname = "ocsvm"\n'
        '[[datasets]]\nname = "digits"\nclasses = ["0", "1"]\n')
    (tmp_path / "sub" / "b.toml").write_text(
        'name = "b"\nseeds = [0]\n[[methods]]\nname = "ocsvm"\n[[methods]]\nname = "iforest"\n'
        'requires_gpu = true\n[[datasets]]\nname = "digits"\nclasses = ["0"]\n')
    (tmp_path / "top.toml").write_text('name = "top"\ninclude = ["sub/a.toml", "sub/b.toml"]\n')
    plan = expand(load_spec(tmp_path / "top.toml"))
    # ocsvm on class 0 is in both: one job; iforest is marked as needing a GPU
    assert len(plan.jobs) == 3 and len({j.job_id for j in plan.jobs}) == 3
    here, gpu = split_requires_gpu(plan.jobs, have_gpu=False)
    assert [j.method for j in gpu] == ["iforest"] and len(here) == 2
    assert split_requires_gpu(plan.jobs, have_gpu=True) == (plan.jobs, [])
    # requires_gpu is an execution option, not identity
    assert replace(gpu[0], requires_gpu=False).job_id == gpu[0].job_id
    rp = plan_refresh(plan.jobs, RunStore(tmp_path / "s"), have_gpu=False)
    assert len(rp.to_run) == 2 and [j.method for j, _ in rp.need_gpu] == ["iforest"]
    (tmp_path / "loop.toml").write_text('name = "l"\ninclude = ["loop.toml"]\n')
    with pytest.raises(SpecError, match="cycle"):
        load_spec(tmp_path / "loop.toml")

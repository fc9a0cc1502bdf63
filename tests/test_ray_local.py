"""The Ray runner on a real local Ray (one instance shared by the whole module).

Covers: same scores as the serial runner, data reuse in workers, method errors not retried, a
worker killed mid-job (retry, then give up), per-job time limits, Ctrl-C then resume, and two
drivers on one store.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import ray_test_methods as tm  # noqa: E402  (tests/ is on sys.path under pytest)
from occbench.harness import registry  # noqa: E402
from occbench.harness.run.driver import run_jobs  # noqa: E402
from occbench.harness.run.ray_runner import RayRunner, init_local_ray  # noqa: E402
from occbench.harness.run.runner import SerialRunner  # noqa: E402
from occbench.harness.run.spec import Job, expand, spec_from_dict  # noqa: E402
from occbench.harness.store.runstore import RunStore  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One embedded Ray for the module, and the test-only methods registered."""
    init_local_ray(num_cpus=2)
    for cls in tm.ALL:
        if cls.name not in registry.methods:
            registry.methods.register(cls)
    yield
    for cls in tm.ALL:
        registry.methods.unregister(cls.name)
    ray.shutdown()


def jobs_of(methods: list[dict[str, Any]], datasets: list[dict[str, Any]] | None = None,
            seeds: tuple[int, ...] = (0,)) -> list[Job]:
    datasets = datasets or [{"name": "digits", "classes": ["0"]}]
    spec = spec_from_dict({"name": "t", "seeds": list(seeds), "methods": methods,
                           "datasets": datasets})
    return expand(spec).jobs


def log_interval(store: RunStore, job_id: str) -> tuple[float, float]:
    line = next(ln for ln in store.log(job_id).splitlines() if "interval" in ln)
    parts = line.split("interval ", 1)[1].split()
    return float(parts[0]), float(parts[1])


def test_ray_scores_equal_serial_and_reuse_data(tmp_path: Path) -> None:
    jobs = jobs_of(
        # kde: its CV bandwidth choice once depended on the BLAS thread count. Scores are equal
        # bit for bit for the same thread count: the serial runner gives a job every core by
        # default, a Ray task the CPUs Ray assigned it (1 here), so serial is pinned to 1
        [{"name": "ocsvm"}, {"name": "iforest", "params": {"n_estimators": 20}},
         {"name": "kde", "params": {"pca": 32, "cv": 3}}],
        [{"name": "digits", "classes": ["0", "1"]},
         {"name": "toy-video", "params": {"seed": 0, "n_frames": 24}}],
    )
    assert len(jobs) == 9
    serial, viaray = RunStore(tmp_path / "serial"), RunStore(tmp_path / "ray")
    s1 = run_jobs(jobs, serial, SerialRunner(threads=1))
    runner = RayRunner(max_concurrent=1)  # one worker: every later job on a split reuses it
    s2 = run_jobs(jobs, viaray, runner)
    runner.close()
    assert (s1.ok, s2.ok, s2.failed) == (9, 9, 0)
    assert viaray.job_ids() == serial.job_ids()
    for jid in serial.job_ids():
        np.testing.assert_array_equal(serial.scores(jid)["raw"], viaray.scores(jid)["raw"])
        assert serial.record(jid)["metrics"] == viaray.record(jid)["metrics"]
    provs = [viaray.record(j.job_id)["provenance"] for j in jobs]
    assert {p["runner"] for p in provs} == {"ray"}
    assert all(p["device"] == "cpu" and p["ray_gpu_ids"] == [] for p in provs)
    assert all(p["threads"] == 1 == p["ray_resources"]["CPU"] for p in provs)
    # ocsvm, iforest, kde per split: the second job on each split finds it loaded
    by_split: dict[tuple[Any, ...], list[str]] = {}
    for j, p in zip(jobs, provs, strict=True):
        by_split.setdefault((j.dataset, j.normal_class, p["ray_worker_pid"]), []).append(
            p["data_cache"])
    assert sum(v.count("miss") for v in by_split.values()) == len(by_split)
    assert sum(v.count("hit") for v in by_split.values()) == 9 - len(by_split) > 0


def test_method_error_recorded_not_retried(tmp_path: Path) -> None:
    count = tmp_path / "count.txt"
    jobs = jobs_of([{"name": "ray-boom", "params": {"count_file": str(count)}},
                    {"name": "ray-probe"}])
    store = RunStore(tmp_path / "store")
    s = run_jobs(jobs, store, RayRunner(max_retries=3, sealed="off"))  # count file in tmp
    assert (s.ok, s.failed) == (1, 1)
    assert count.read_text().split() == ["x"]  # ran exactly once
    (fail,) = store.failures()
    assert fail["error"]["type"] == "RuntimeError"
    assert "boom: deliberate failure" in fail["error"]["traceback"]


def _kill_pids(pid_files: dict[Path, int], stop: threading.Event) -> None:
    """Kill -9 each new pid written to a file, at most ``n`` per file."""
    killed: dict[Path, set[int]] = {p: set() for p in pid_files}
    while not stop.is_set():
        for p, n in pid_files.items():
            if not p.exists():
                continue
            for pid in map(int, p.read_text().split()):
                if pid not in killed[p] and len(killed[p]) < n:
                    time.sleep(0.3)  # let the job get going
                    os.kill(pid, signal.SIGKILL)
                    killed[p].add(pid)
        time.sleep(0.1)


def test_killed_worker_is_retried_then_recorded(tmp_path: Path) -> None:
    b = tmp_path / "b.pids"
    jobs = jobs_of([
        {"name": "ray-probe"},
        {"name": "ray-pid-sleeper", "params": {"pid_file": str(b), "slow_attempts": 9}},
    ])
    store = RunStore(tmp_path / "store")
    stop = threading.Event()
    killer = threading.Thread(target=_kill_pids, args=({b: 2}, stop), daemon=True)
    killer.start()
    try:
        s = run_jobs(jobs, store, RayRunner(max_retries=1, sealed="off"))  # pid file in tmp
    finally:
        stop.set()
        killer.join()
    # killed, retried once (a second pid), killed again, gave up; the rest of the grid ran
    assert len(set(b.read_text().split())) == 2
    assert (s.ok, s.failed) == (1, 1)
    assert store.job_ids() == [jobs[0].job_id]
    (fail,) = store.failures()
    assert fail["job_id"] == jobs[1].job_id
    assert fail["error"]["type"] == "WorkerDied" and "1 retries" in fail["error"]["message"]
    # the store is intact: records parse, no half-written run folders, no lock left held
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]
    for jid in store.job_ids():
        assert store.record(jid)["status"] == "ok" and len(store.scores(jid)) > 0
    with store.claim(jobs[1].job_id) as got:
        assert got


def test_time_limit_stops_job(tmp_path: Path) -> None:
    jobs = jobs_of([{"name": "ray-probe", "params": {"sleep_s": 60.0}}],
                   [{"name": "digits", "classes": ["0"], "time_limit_s": 1.5}])
    store = RunStore(tmp_path / "store")
    t0 = time.perf_counter()
    s = run_jobs(jobs, store, RayRunner())
    assert time.perf_counter() - t0 < 20
    assert (s.ok, s.failed) == (0, 1)
    (fail,) = store.failures()
    assert fail["status"] == "timeout" and fail["error"]["type"] == "TimeLimitExceeded"
    assert 1.5 <= fail["provenance"]["wall_time_s"] < 10


def test_default_time_limit_and_cli_override_on_ray(tmp_path: Path) -> None:
    """Without any limit in the spec a job gets the built-in 2 h; ``--time-limit`` overrides the
    spec, a hanging job is recorded ``timeout`` and the rest of the grid runs."""
    from occbench.harness.cli.main import app
    from typer.testing import CliRunner

    (job,) = jobs_of([{"name": "ray-probe"}])
    assert job.time_limit_s is None and RayRunner().time_limit(job) == 7200
    assert RayRunner(default_time_limit_s=0).time_limit(job) is None
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "hang"\nseeds = [0]\ntime_limit_s = "1h"\n'
                    '[[methods]]\nname = "ray-probe"\nparams = { sleep_s = 3600.0 }\n'
                    '[[methods]]\nname = "ray-probe"\nparams = { tag = "quick" }\n'
                    '[[datasets]]\nname = "digits"\nclasses = ["0"]\n')
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["run", str(spec), "--store", str(tmp_path / "s"), "--runner",
                                 "ray", "--no-board", "--time-limit", "45s"])
    # 45 s: room for the quick job's worker start on a loaded machine (it timed out at 20 s)
    assert time.perf_counter() - t0 < 180, r.output
    assert r.exit_code == 1, r.output
    store = RunStore(tmp_path / "s")
    assert len(store.job_ids()) == 1
    (fail,) = store.failures()
    assert fail["status"] == "timeout" and "time limit of 45 s" in fail["error"]["message"]
    assert fail["error"]["origin"] == "runner"


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_method_output_is_capped_in_the_run_log_not_in_ray_session_logs(tmp_path: Path) -> None:
    from ray._private.worker import global_worker

    logs = Path(global_worker.node.get_logs_dir_path())
    before = _tree_bytes(logs)
    (job,) = jobs_of([{"name": "ray-chatty", "params": {"log_mb": 100, "print_mb": 50}}])
    store = RunStore(tmp_path / "store")
    s = run_jobs([job], store, RayRunner(max_concurrent=1))
    assert s.ok == 1
    grown = _tree_bytes(logs) - before
    assert grown < 4 * 2**20, f"Ray's session logs grew by {grown} bytes"
    size = (store.runs_dir / job.job_id / "log.txt").stat().st_size
    assert size <= 2**20 + 1024  # of about 210 MiB written
    log = store.log(job.job_id)
    assert "FIRST-LOG-LINE" in log[:4096] and "FIRST-PRINT-LINE" in log[:4096]
    assert "LAST-LOG-LINE" in log[-4096:] and "LAST-PRINT-LINE" in log[-4096:]
    assert "bytes of this job's output cut here" in log
    assert "warnings" in store.record(job.job_id)["provenance"]  # declares 64 MiB, uses more


def test_ctrl_c_stops_scheduling_and_rerun_resumes(tmp_path: Path) -> None:
    jobs = jobs_of([{"name": "ray-probe", "params": {"sleep_s": 0.6, "tag": str(i)}}
                    for i in range(6)])
    store = RunStore(tmp_path / "store")
    seen: list[str] = []

    def progress(event: str, job: Job, out: Any) -> None:
        if event == "ok" and "ok" not in seen:  # first result in: press Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        seen.append(event)

    s1 = run_jobs(jobs, store, RayRunner(max_concurrent=2), progress=progress)
    assert s1.interrupted and s1.stop_reason and "resume" in s1.stop_reason
    assert s1.failed == 0 and 1 <= s1.ok < 6
    s2 = run_jobs(jobs, store, RayRunner(max_concurrent=2))
    assert s2.already_done == s1.ok and s2.ok == 6 - s1.ok and s2.failed == 0
    assert len(store.job_ids()) == 6


def test_two_drivers_never_run_a_job_twice(tmp_path: Path) -> None:
    jobs = jobs_of([{"name": "ray-probe", "params": {"sleep_s": 0.3, "tag": str(i)}}
                    for i in range(8)])
    # created up front: RunStore.init() itself is racy for two drivers on a brand-new folder
    # (one sees the other's runs/ before its marker file); reported to the store's owner
    store = RunStore(tmp_path / "store").init()
    summaries: list[Any] = [None, None]

    def drive(i: int) -> None:
        summaries[i] = run_jobs(jobs, store, RayRunner(max_concurrent=2))

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.ok for s in summaries) == 8
    assert sum(s.ran for s in summaries) == 8 and not any(s.failed for s in summaries)
    assert len(store.job_ids()) == 8 and not store.failures()
    for jid in store.job_ids():  # each record written once, by one driver
        assert json.loads((store.runs_dir / jid / "record.json").read_text())["job_id"] == jid


# --------------------------------------------------------------------------------------------
# refresh and sweep (CLI and Tune) on the same Ray
# --------------------------------------------------------------------------------------------


def test_refresh_check_runs_only_changed_jobs(tmp_path: Path) -> None:
    from occbench.harness.cli.main import app
    from typer.testing import CliRunner

    spec = tmp_path / "spec.toml"
    text = ('name = "r"\nseeds = [0]\n[[methods]]\nname = "ocsvm"\nparams = { nu = 0.1 }\n'
            '[[datasets]]\nname = "digits"\nclasses = ["0"]\n')
    spec.write_text(text)
    store, board = tmp_path / "store", tmp_path / "board"
    cli = CliRunner()
    args = ["refresh", str(spec), "--store", str(store), "--board-out", str(board)]
    r = cli.invoke(app, [*args, "--check"])
    assert r.exit_code == 1 and "1 to run" in r.output and "new" in r.output
    r = cli.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (board / "leaderboard.csv").exists() and len(RunStore(store).job_ids()) == 1
    r = cli.invoke(app, [*args, "--check"])
    assert r.exit_code == 0 and "0 to run" in r.output
    spec.write_text(text.replace("nu = 0.1", "nu = 0.3"))  # a changed parameter: a new job
    r = cli.invoke(app, [*args, "--check"])
    assert r.exit_code == 1 and "method_params.nu 0.1 → 0.3" in r.output


def test_sweep_selects_on_validation_and_writes_table(tmp_path: Path) -> None:
    import pandas as pd
    from occbench.harness.run.sweep import run_sweep, sweep_from_dict

    base = {"name": "sw", "method": "ocsvm", "dataset": "digits", "classes": ["0"],
            "seeds": [0], "search": {"nu": {"grid": [0.05, 0.5]}}}
    store = RunStore(tmp_path / "store").init()
    runner = RayRunner()
    res = run_sweep(sweep_from_dict(base), store, runner)
    t = res.table
    assert len(t) == 2 and sorted(t["param_nu"]) == [0.05, 0.5]
    assert t["val_auc"].between(0.5, 1.0).all() and t["test_auc"].between(0.5, 1.0).all()
    assert t["best"].sum() == 1 and t.loc[t["best"], "val_auc"].item() == t["val_auc"].max()
    assert not t["selected_on_test"].any() and (t["trial_error"].isna()).all()
    assert res.path == store.path / "sweeps" / "sw.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(res.path), t)
    ids = [i for js in t["job_ids"] for i in json.loads(js)]
    assert sorted(ids) == store.job_ids()
    rec = store.record(ids[0])
    assert rec["job"]["tags"]["sweep"] == "sw" and rec["job"]["selected_on_test"] is False
    # (select_on = "test" marking: tests/test_ray_sweep_spec.py, without paying for Tune twice)


def test_workers_do_not_import_from_the_drivers_folder(tmp_path: Path) -> None:
    # Ray starts local workers in the driver's folder and puts it on their sys.path: a folder
    # there named like a plugin would shadow the installed plugin in Ray jobs only
    store = RunStore(tmp_path / "store")
    runner = RayRunner(max_concurrent=1, sealed="off")  # the worker itself runs the method
    s = run_jobs(jobs_of([{"name": "ray-path-probe"}]), store, runner)
    runner.close()
    assert s.ok == 1
    line = next(ln for ln in store.log(store.job_ids()[0]).splitlines() if "on_path" in ln)
    assert line.rstrip().endswith("on_path False"), line

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
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import SpecError, expand, spec_from_dict
from occbench.harness.store.export import export_store
from occbench.harness.store.runstore import DiskFullError, RunStore, StoreError
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
                       {"name": "test-slow", "params": {"sleep": 120.0}},
                       {"name": "test-mean"}])
    # a limit with room for a quick job's worker start on a loaded 2-core machine
    spec["datasets"] = [{"name": "digits", "classes": ["0"], "time_limit_s": 20}]
    store = RunStore(tmp_path / "s")
    runner = SerialRunner(sealed="off")  # the worker itself dies (sealed: its sandbox does)
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
    import occbench.harness.store.runstore as store_mod

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
    # the runs before the failure are intact, and those the store's writer threads had in
    # hand finished (a real full disk fails them too): every run reported ok is there
    assert s.ok >= 2 and len(store.job_ids()) == s.ok and s.ok + s.failed < len(jobs)
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]  # no debris
    monkeypatch.setattr(store_mod, "_write_parquet", real)
    s2 = run_jobs(jobs, store, SerialRunner(in_process=True))
    assert s2.ok == len(jobs) - s.ok and len(store.job_ids()) == len(jobs)


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


def _slow_grid_cli(tmp_path: Path, seeds: int, classes: int, sleep: float,
                   method: str = "test-slow", params: str = ""
                   ) -> tuple[list[str], dict[str, str]]:
    """An `occbench run` command line (and its environment) for a grid of sleeping jobs."""
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        f'name = "slow"\nseeds = {list(range(seeds))}\n[[methods]]\nname = "{method}"\n'
        f'params = {{ sleep = {sleep}{params} }}\n[[datasets]]\nname = "digits"\n'
        f'classes = {[str(c) for c in range(classes)]}\n'.replace("'", '"'))
    env = {**os.environ, "OCCBENCH_PLUGIN_MODULES": "plugins_for_tests",
           "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "occbench.harness", "run", str(spec_file), "--store",
           str(tmp_path / "s"), "--runner", "serial", "--no-board"]
    return cmd, env


def _children(pid: int) -> set[int]:
    """Live descendants of ``pid`` (Linux /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo += kids
    return out


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(cond: object, timeout: float, step: float = 0.1) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(cond())  # type: ignore[operator]


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
    spawned = _children(p.pid)  # the worker and multiprocessing's resource_tracker
    assert len(spawned) >= 2, spawned
    p.send_signal(signal.SIGKILL)  # the harshest stop: no cleanup at all
    p.wait(timeout=30)
    log.close()
    # nothing the driver spawned outlives it (the worker dies with it, the tracker follows)
    assert _wait_until(lambda: not [c for c in spawned if _alive(c)], 10), \
        [Path(f"/proc/{c}/cmdline").read_text() for c in spawned if _alive(c)]
    done_before = set(store.job_ids())
    assert 3 <= len(done_before) < 12
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ran {12 - len(done_before)} jobs" in out.stdout
    assert len(store.job_ids()) == 12
    for jid in done_before:  # earlier results untouched
        assert json.loads((store.runs_dir / jid / "record.json").read_text())["job_id"] == jid


def _start_grid(tmp_path: Path, sleep: float, jobs: int = 2) -> tuple[subprocess.Popen[str], Path]:
    """`occbench run` (serial) of ``jobs`` sleeping jobs in its own session, as a terminal
    would run it; returns once the first job is running in the worker."""
    pids = tmp_path / "pids"
    cmd, env = _slow_grid_cli(tmp_path, seeds=jobs, classes=1, sleep=sleep,
                              method="test-attempts", params=f', pid_file = "{pids}"')
    cmd.append("--unsealed")  # the pid file is in this test's tmp folder (a sandbox hides it)
    # the pre-run conformance check would fit the method in the driver (writing a pid too):
    # these tests signal the driver while a *job* runs
    cmd.append("--no-check-methods")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    assert _wait_until(lambda: pids.exists() and pids.read_text().strip(), 120), \
        p.communicate(timeout=30)[0] if p.poll() is not None else "never started"
    return p, pids


def test_ctrl_c_to_the_process_group_lets_the_running_job_finish(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of the group: the worker ignores it, the
    running job finishes and is stored, no further job starts, the count is shown."""
    p, pids = _start_grid(tmp_path, sleep=3.0)
    os.killpg(p.pid, signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 1, out
    assert "finishing 1 running job; Ctrl-C again to cancel them" in out
    assert "interrupted (Ctrl-C): rerun the same command to resume" in out
    store = RunStore(tmp_path / "s")
    assert len(store.job_ids()) == 1 and not store.failures()  # finished, nothing else began
    assert len(pids.read_text().split()) == 1


def test_second_ctrl_c_cancels_the_running_job_and_exits_fast(tmp_path: Path) -> None:
    p, pids = _start_grid(tmp_path, sleep=600.0)
    worker = int(pids.read_text().split()[0])
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(1.5)
    assert p.poll() is None and _alive(worker)  # first press: the job goes on
    os.killpg(p.pid, signal.SIGINT)
    t0 = time.monotonic()
    out = p.communicate(timeout=60)[0]
    assert time.monotonic() - t0 < 10, out
    assert p.returncode in (1, 130), out
    assert "cancelling 1 running job" in out
    assert _wait_until(lambda: not _alive(worker), 5)
    assert RunStore(tmp_path / "s").job_ids() == []


def test_time_limits_spec_default_entry_and_builtin() -> None:
    from occbench.harness.run.limits import DEFAULT_TIME_LIMIT_S, parse_duration

    d = small_spec([{"name": "test-mean"}], time_limit_s="90s")
    d["time_limit_s"] = "1h30m"  # the spec-wide default; toy-video overrides it
    jobs = expand(spec_from_dict(d)).jobs
    assert {j.dataset: j.time_limit_s for j in jobs} == {"digits": 5400.0, "toy-video": 90.0}
    plain = expand(spec_from_dict(small_spec([{"name": "test-mean"}]))).jobs[0]
    assert plain.time_limit_s is None and DEFAULT_TIME_LIMIT_S == 7200
    runner = SerialRunner()
    assert runner.time_limit(plain) == 7200
    from dataclasses import replace

    assert runner.time_limit(replace(plain, time_limit_s=0)) is None  # 0: no limit
    assert SerialRunner(default_time_limit_s=0).time_limit(plain) is None
    assert [parse_duration(v) for v in (7200, "7200", "30m", "2h", "1h30m", "45s", "none")] == \
        [7200, 7200, 1800, 7200, 5400, 45, 0]
    for bad in ("10x", "-5", "", True, "1h-3m"):
        with pytest.raises(ValueError, match="seconds"):
            parse_duration(bad)
    with pytest.raises(SpecError, match=r"time_limit_s.*30 minutes"):
        expand(spec_from_dict({**small_spec([{"name": "test-mean"}]),
                               "time_limit_s": "30 minutes"}))


def test_cli_time_limit_stops_a_hanging_job_and_the_grid_goes_on(tmp_path: Path) -> None:
    from occbench.harness.cli.main import app
    from typer.testing import CliRunner

    spec = tmp_path / "spec.toml"
    spec.write_text('name = "hang"\nseeds = [0]\n[[methods]]\nname = "test-slow"\n'
                    'params = { sleep = 3600.0 }\n[[methods]]\nname = "test-mean"\n'
                    '[[datasets]]\nname = "digits"\nclasses = ["0"]\ntime_limit_s = 3600\n')
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["run", str(spec), "--store", str(tmp_path / "s"),
                                 "--runner", "serial", "--no-board", "--time-limit", "45s"])
    # 45 s: room for the quick job's worker start on a loaded machine (it timed out at 15 s)
    assert time.monotonic() - t0 < 240, r.output
    assert r.exit_code == 1, r.output
    store = RunStore(tmp_path / "s")
    assert len(store.job_ids()) == 1  # test-mean ran after the hanging job was stopped
    (fail,) = store.failures()
    assert fail["status"] == "timeout" and fail["error"]["type"] == "TimeLimitExceeded"
    assert "time limit of 45 s" in fail["error"]["message"]
    assert 45 <= fail["provenance"]["wall_time_s"] < 120
    r = CliRunner().invoke(app, ["run", str(spec), "--time-limit", "soon"])
    assert r.exit_code == 2 and "--time-limit must be seconds" in r.output


def test_killed_worker_is_retried_its_own_exit_and_errors_are_not(tmp_path: Path) -> None:
    f1, f2, f3 = tmp_path / "once", tmp_path / "always", tmp_path / "exit"
    spec = small_spec([
        {"name": "test-attempts", "params": {"pid_file": str(f1), "kill_attempts": 1}},
        {"name": "test-attempts", "params": {"pid_file": str(f2), "kill_attempts": 99}},
        {"name": "test-attempts", "params": {"pid_file": str(f3), "kill_attempts": 99,
                                             "exit_code": 3}},
    ])
    spec["datasets"] = spec["datasets"][:1]
    spec["datasets"][0]["classes"] = ["0"]
    store = RunStore(tmp_path / "s")
    # unsealed: the pid files are in this test's tmp folder, which a sandbox hides, and the
    # kill must hit the worker process itself
    runner = SerialRunner(max_retries=1, sealed="off")
    try:
        s = run_jobs(expand(spec_from_dict(spec)).jobs, store, runner)
    finally:
        runner.close()
    assert (s.ok, s.failed) == (1, 2)
    assert len(f1.read_text().split()) == 2  # killed once, the retry in a fresh worker ran
    (ok,) = store.records()
    assert ok["provenance"]["worker_deaths"] == ["killed by SIGKILL"]
    assert len(f2.read_text().split()) == 2  # killed each time: 1 + 1 retry, then recorded
    assert len(f3.read_text().split()) == 1  # exited by itself: a result, not retried
    fails = {f["job"]["method_params"]["pid_file"]: f["error"] for f in store.failures()}
    assert fails[str(f2)]["type"] == "WorkerDied" and "2 attempts" in fails[str(f2)]["message"]
    assert fails[str(f3)]["type"] == "WorkerDied" and "status 3" in fails[str(f3)]["message"]


def _die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_workers_code_is_read_even_when_another_thread_reaped_it() -> None:
    """The race CI hit: the pool's manager thread reaps the killed worker at the instant the
    runner reads its exit code. The reader sees None until the winner stores -9; the runner
    must wait for it, or a SIGKILL looks like 'no code' and the job is not retried."""
    import multiprocessing as mp
    import threading

    from occbench.harness.run.runner import _exit_code, _exited

    p = mp.get_context("spawn").Process(target=_die_by_sigkill)
    p.start()
    p.join()  # reaped here; now undo it, as if another thread's waitpid had won the race
    assert p.exitcode == -signal.SIGKILL
    popen = p._popen  # type: ignore[attr-defined]
    popen.returncode = None
    assert p.exitcode is None  # what the old code read: waitpid now fails with ECHILD
    assert _exited(p)
    threading.Timer(0.3, lambda: setattr(popen, "returncode", -signal.SIGKILL)).start()
    t0 = time.monotonic()
    assert _exit_code(p) == -signal.SIGKILL
    assert 0.25 < time.monotonic() - t0 < 3


def test_rerun_does_not_repeat_method_errors_unless_asked(tmp_path: Path) -> None:
    spec = spec_from_dict(small_spec([{"name": "test-nan"}, {"name": "test-mean"}]))
    store = RunStore(tmp_path / "s")
    runner = SerialRunner(in_process=True)
    s1 = run_jobs(expand(spec).jobs, store, runner)
    assert (s1.ok, s1.failed) == (3, 3)
    assert {f["error"]["origin"] for f in store.failures()} == {"method"}
    s2 = run_jobs(expand(spec).jobs, store, runner)  # same method, data, seeds: same errors
    assert (s2.ran, s2.already_done, s2.not_retried) == (0, 3, 3)
    assert {f["attempts"] for f in store.failures()} == {1}
    s3 = run_jobs(expand(spec).jobs, store, runner, retry_failed=True)
    assert (s3.ran, s3.failed) == (3, 3)
    assert {f["attempts"] for f in store.failures()} == {2}
    # a failure that is not the method's own (a time limit) is retried by a plain rerun
    slow = small_spec([{"name": "test-slow", "params": {"sleep": 30.0}}])
    slow["datasets"] = [{"name": "digits", "classes": ["0"], "time_limit_s": 1}]
    jobs = expand(spec_from_dict(slow)).jobs
    store2 = RunStore(tmp_path / "s2")
    r = SerialRunner()
    try:
        assert run_jobs(jobs, store2, r).failed == 1
        assert store2.failures()[0]["error"]["origin"] == "runner"
        assert run_jobs(jobs, store2, r).ran == 1
    finally:
        r.close()


def test_method_output_is_captured_capped_and_kept_off_the_terminal(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    spec = small_spec([{"name": "test-chatty", "params": {"log_mb": 100, "print_mb": 20}}])
    spec["datasets"] = [{"name": "digits", "classes": ["0"]}]
    store = RunStore(tmp_path / "s")
    runner = SerialRunner()
    try:
        s = run_jobs(expand(spec_from_dict(spec)).jobs, store, runner)
    finally:
        runner.close()
    assert s.ok == 1
    (jid,) = store.job_ids()
    size = (store.runs_dir / jid / "log.txt").stat().st_size
    assert size <= 2**20 + 2**16  # 1 MiB and the note (+64 KiB: the worker's own lines when the
    # method ran sealed), of 120 MiB written
    log = store.log(jid)
    for head in ("FIRST-LOG-LINE", "FIRST-PRINT-LINE", "FD2-LINE", "CHILD-LINE"):
        assert head in log[:2**19]
    assert "LAST-LOG-LINE" in log[-2**19:] and "LAST-PRINT-LINE" in log[-2**19:]
    (note,) = [ln for ln in log.splitlines() if ln.startswith("[occbench: ")]
    cut = int(note.split()[1])
    assert 120 * 2**20 < cut + size < 140 * 2**20  # the note counts what is missing (120 MiB
    # of messages, plus the logger's timestamp and name on each record)
    assert "bytes of this job's output cut here" in note
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 10_000  # none of it reached the driver's terminal


def test_peak_memory_above_the_declared_is_a_warning(tmp_path: Path) -> None:
    spec = small_spec([{"name": "test-memory", "params": {"alloc_mb": 600, "declared_mb": 256}},
                       {"name": "test-memory", "params": {"alloc_mb": 100,
                                                          "declared_mb": 4096}}])
    spec["datasets"] = [{"name": "digits", "classes": ["0"]}]
    store = RunStore(tmp_path / "s")
    runner = SerialRunner()
    try:
        s = run_jobs(expand(spec_from_dict(spec)).jobs, store, runner)
    finally:
        runner.close()
    assert s.ok == 2
    by_decl = {r["job"]["method_params"]["declared_mb"]: r["provenance"]
               for r in store.records()}
    over = by_decl[256]
    assert over["peak_rss_mb"] > 600
    (w,) = over["warnings"]
    assert "above the 256 MiB the method declares" in w and f"{over['peak_rss_mb']:.0f}" in w
    assert by_decl[4096]["peak_rss_mb"] < 4096 and "warnings" not in by_decl[4096]


def test_scores_deterministic_across_processes(tmp_path: Path) -> None:
    spec = spec_from_dict(small_spec([{"name": "iforest"}]))
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    run_jobs(expand(spec).jobs, a, SerialRunner())
    run_jobs(expand(spec).jobs, b, SerialRunner(in_process=True))
    for jid in a.job_ids():
        np.testing.assert_array_equal(a.scores(jid).raw, b.scores(jid).raw)


def test_serial_jobs_use_the_cores_given_and_scores_depend_only_on_seed_and_threads(
        tmp_path: Path) -> None:
    from occbench.harness.run.runner import available_cores

    # dcae declares cpus=1 (so four pack on a GPU); serially it gets every core by default
    spec = spec_from_dict({"name": "t", "seeds": [0],
                           "methods": [{"name": "dcae", "params": {"epochs": 2}}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    (job,) = expand(spec).jobs
    stores = {k: RunStore(tmp_path / k) for k in ("all", "one", "two", "two-again")}
    runners = {"all": SerialRunner(sealed="off"), "one": SerialRunner(sealed="off", threads=1),
               "two": SerialRunner(sealed="off", threads=2),
               "two-again": SerialRunner(sealed="off", threads=2)}
    for k, r in runners.items():
        assert run_jobs([job], stores[k], r).ok == 1
    rec = {k: st.record(job.job_id) for k, st in stores.items()}
    assert rec["all"]["provenance"]["threads"] == available_cores()
    assert rec["one"]["provenance"]["threads"] == 1 and rec["two"]["provenance"]["threads"] == 2
    assert rec["all"]["provenance"]["resources"]["cpus"] == 1  # declared: unchanged
    raw = {k: st.scores(job.job_id).raw for k, st in stores.items()}
    # same seed and thread count (two processes): bit for bit the same scores
    np.testing.assert_array_equal(raw["two"], raw["two-again"])
    # another thread count: torch sums in another order, so the last digits may differ (the
    # thread count is in the provenance; the job and its id are the same)
    np.testing.assert_allclose(raw["one"], raw["two"], rtol=1e-4, atol=1e-6)
    assert len({r["job_id"] for r in rec.values()}) == 1


def test_serial_worker_openmp_threads_wait_passively() -> None:
    from occbench.harness.run.runner import WORKER_ENV

    expected = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # the user's choice stands
    runner = SerialRunner()
    try:
        got = runner._get_pool().submit(os.getenv, "OMP_WAIT_POLICY").result(timeout=120)
    finally:
        runner.close()
    assert got == expected
    assert os.environ.get("OMP_WAIT_POLICY") == (None if WORKER_ENV else expected)  # restored


def test_spec_include_is_a_union_and_gpu_jobs_are_never_attempted_without_one(
        tmp_path: Path) -> None:
    from dataclasses import replace

    from occbench.harness.run.refresh import plan_refresh
    from occbench.harness.run.spec import SpecError, load_spec, split_requires_gpu

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

"""Sealed method execution (issue 14): a cheating plugin tries every route to the test labels.

Sealed, under the serial and the Ray runner, each route fails (asserted one by one) and the
cheater's scores are exactly the honest method's. With ``--unsealed`` (``sealed="off"``) the same
test shows which routes exist there (the label server, a label file by host path, the user's
config), so it can fail; the in-process bypasses (``__wrapped__``, the guard, the data root in
frames, argv and the environment) stay closed either way.

The label server is started by the test itself on 127.0.0.1 (an ephemeral port), serves only
loopback, and stops at the end of the module (or after 10 minutes at the latest).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cheating_plugin  # noqa: F401  (registers test-cheater)
import numpy as np
import plugins_for_tests  # noqa: F401  (registers test-mean)
import pytest
from occbench.datasets import fakes
from occbench.harness.run import sandbox
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import expand, make_dataset, spec_from_dict
from occbench.harness.store.runstore import RunStore

TESTS = Path(__file__).resolve().parent
needs_bwrap = pytest.mark.skipif(not sandbox.probe().ok,
                                 reason=f"no sandbox here: {sandbox.probe().why}")

#: Routes that must be closed in every mode (in-process hardening).
ALWAYS_CLOSED = ("wrapped", "guard_reset", "frames", "argv", "environ", "sidecar_source")
#: Routes that only the sandbox closes.
SEALED_ONLY = ("gc", "ppid", "processes", "memmap", "probe_file", "config",
               "usr_share_datasets", "label_server")


class _Labels(BaseHTTPRequestHandler):
    payload = b"[]"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Fake MNIST under a data root whose path holds a token; a label file elsewhere; a user
    config naming the root; a loopback label server."""
    base = tmp_path_factory.mktemp("sealed")
    token = "tok" + os.urandom(6).hex()
    root = base / f"root-{token}"
    fakes.write_mnist(root / "mnist", n_train_per_class=6, n_test_per_class=4)
    fakes.write_ped2_frames(root / "ped2")  # video: memmaps of the frame cache
    labels = make_dataset("mnist", {}, str(root)).test_labels("0").per_video[""]
    secret = base / "secret"
    secret.mkdir()
    np.save(secret / "labels.npy", labels)
    cfg = base / "cfg" / "occbench"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'data_root = "{root}"\n')
    handler = type("H", (_Labels,), {"payload": json.dumps(labels.tolist()).encode()})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    stop = threading.Timer(600, srv.shutdown)  # bounded even if the module hangs
    stop.daemon = True
    stop.start()
    try:
        yield {"root": str(root), "token": token, "port": srv.server_address[1],
               "probe_file": str(secret / "labels.npy"), "config_file": str(cfg / "config.toml"),
               "xdg": str(base / "cfg"), "labels": labels, "cache": str(base / "cache")}
    finally:
        stop.cancel()
        srv.shutdown()
        srv.server_close()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, world: dict[str, Any]) -> None:
    monkeypatch.setenv("OCCBENCH_PLUGIN_MODULES", "cheating_plugin,plugins_for_tests")
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("XDG_CONFIG_HOME", world["xdg"])


def _jobs(world: dict[str, Any]) -> list[Any]:
    params = {k: world[k] for k in ("token", "port", "probe_file", "config_file")}
    spec = spec_from_dict({"name": "cheat", "seeds": [0],
                           "methods": [{"name": "test-cheater", "params": params},
                                       {"name": "test-mean"}],
                           "datasets": [{"name": "mnist", "classes": ["0"]},
                                        {"name": "ped2", "params": {"cache_dir": world["cache"]}}
                                        ]})
    jobs = expand(spec, world["root"]).jobs
    order = {("test-cheater", "mnist"): 0, ("test-mean", "mnist"): 1,
             ("test-cheater", "ped2"): 2, ("test-mean", "ped2"): 3}
    return sorted(jobs, key=lambda j: order[(j.method, j.dataset)])


def _report(store: RunStore, job_id: str) -> dict[str, str]:
    m = re.search(r"CHEAT-REPORT (\{.*\})", store.log(job_id))
    assert m, store.log(job_id)[-2000:]
    return dict(json.loads(m.group(1)))


def _run(tmp_path: Path, world: dict[str, Any], runner: Any) -> tuple[RunStore, list[Any]]:
    store = RunStore(tmp_path / "store")
    jobs = _jobs(world)
    try:
        s = run_jobs(jobs, store, runner, world["root"])
    finally:
        runner.close()
    assert s.ok == 4, [f["error"] for f in store.failures()]
    return store, jobs


def _check_sealed(store: RunStore, jobs: list[Any]) -> None:
    cheat, honest, vcheat, vhonest = jobs
    for jid in (cheat.job_id, vcheat.job_id):
        rep = _report(store, jid)
        for route in (*ALWAYS_CLOSED, *SEALED_ONLY):
            assert rep[route].startswith("blocked"), (route, rep[route])
    np.testing.assert_array_equal(store.scores(vcheat.job_id)["raw"].to_numpy(),
                                  store.scores(vhonest.job_id)["raw"].to_numpy())
    rc, rh = store.record(cheat.job_id), store.record(honest.job_id)
    assert rc["provenance"]["sealed"] is True and rc["provenance"]["sealed_by"]
    # an honest AUC: exactly the honest method's scores
    np.testing.assert_array_equal(store.scores(cheat.job_id)["raw"].to_numpy(),
                                  store.scores(honest.job_id)["raw"].to_numpy())
    assert rc["metrics"]["auc"] == rh["metrics"]["auc"]


def _check_unsealed(store: RunStore, jobs: list[Any], labels: np.ndarray) -> None:
    cheat, _, vcheat, _ = jobs
    vrep = _report(store, vcheat.job_id)
    # video frames are memmaps of the frame cache, but its sidecars name no source folder
    assert vrep["memmap"].startswith("open") and "frames" in vrep["memmap"], vrep["memmap"]
    for route in ALWAYS_CLOSED:
        assert vrep[route].startswith("blocked"), (route, vrep[route])
    rep = _report(store, cheat.job_id)
    print("unsealed routes:", json.dumps(rep, indent=1))  # shown with pytest -s
    for route in ALWAYS_CLOSED:
        assert rep[route].startswith("blocked"), (route, rep[route])
    # the routes exist without the sandbox: the test can fail
    for route in ("label_server", "probe_file", "config"):
        assert rep[route].startswith("open"), (route, rep[route])
    if os.path.isdir("/usr/share/datasets") and os.listdir("/usr/share/datasets"):
        assert rep["usr_share_datasets"].startswith("open")
    rec = store.record(cheat.job_id)
    assert rec["provenance"]["sealed"] is False
    assert rec["metrics"]["auc"] == 1.0  # it read the labels and returned them as scores
    np.testing.assert_array_equal(store.scores(cheat.job_id)["raw"].to_numpy(), labels)


@needs_bwrap
def test_serial_sealed_blocks_every_route(tmp_path: Path, world: dict[str, Any]) -> None:
    store, jobs = _run(tmp_path, world, SerialRunner(sealed="require"))
    _check_sealed(store, jobs)


def test_serial_unsealed_routes_exist(tmp_path: Path, world: dict[str, Any]) -> None:
    store, jobs = _run(tmp_path, world, SerialRunner(sealed="off"))
    _check_unsealed(store, jobs, world["labels"])


@pytest.fixture(scope="module")
def local_ray(world: dict[str, Any]) -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from occbench.harness.run.ray_runner import init_local_ray

    # Ray's workers inherit the environment at start: the test plugins and the config
    saved = {k: os.environ.get(k) for k in ("OCCBENCH_PLUGIN_MODULES", "PYTHONPATH",
                                            "XDG_CONFIG_HOME")}
    os.environ.update(OCCBENCH_PLUGIN_MODULES="cheating_plugin,plugins_for_tests",
                      PYTHONPATH=str(TESTS) + os.pathsep + (saved["PYTHONPATH"] or ""),
                      XDG_CONFIG_HOME=world["xdg"])
    if ray.is_initialized():
        ray.shutdown()
    init_local_ray(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.ray
@needs_bwrap
def test_ray_sealed_blocks_every_route(tmp_path: Path, world: dict[str, Any],
                                       local_ray: None) -> None:
    from occbench.harness.run.ray_runner import RayRunner

    store, jobs = _run(tmp_path, world, RayRunner(sealed="require"))
    _check_sealed(store, jobs)
    assert store.record(jobs[0].job_id)["provenance"]["ray_node_id"]


@pytest.mark.ray
def test_ray_unsealed_routes_exist(tmp_path: Path, world: dict[str, Any],
                                   local_ray: None) -> None:
    from occbench.harness.run.ray_runner import RayRunner

    store, jobs = _run(tmp_path, world, RayRunner(sealed="off"))
    _check_unsealed(store, jobs, world["labels"])


# --------------------------------------------------------------------------------------------
# Same scores sealed and unsealed
# --------------------------------------------------------------------------------------------


def _quick_subset() -> list[Any]:
    """One job per (method, dataset) of the quick grid, seed 1, the first class."""
    from occbench.harness.run.spec import load_spec

    seen: dict[tuple[str, str], Any] = {}
    for j in expand(load_spec("quick")).jobs:
        if j.seed == 1:
            seen.setdefault((j.method, j.dataset), j)
    return list(seen.values())


def _same_scores(job: Any, root: str | None = None) -> dict[str, Any]:
    from occbench.harness.run.execute import execute_job

    off = execute_job(job, root, "cpu", sealed="off")
    on = execute_job(job, root, "cpu", sealed="require")
    assert off.status == on.status == "ok", (off.error, on.error)
    assert off.provenance["sealed"] is False and on.provenance["sealed"] is True
    assert list(off.raw) == list(on.raw)
    for k in off.raw:  # bit for bit, NaN where NaN
        assert off.raw[k].dtype == on.raw[k].dtype == np.float64
        assert off.raw[k].tobytes() == on.raw[k].tobytes(), (job.display, k)
    return on.provenance


@needs_bwrap
def test_quick_grid_subset_bit_identical_sealed_and_unsealed() -> None:
    jobs = _quick_subset()
    assert {j.dataset for j in jobs} == {"digits", "toy-video"} and len(jobs) == 6
    for j in jobs:
        prov = _same_scores(j)
        assert prov["test_independent"] is True  # the classic baselines are inductive


@needs_bwrap
def test_the_threads_a_runner_gives_reach_the_sealed_process() -> None:
    from occbench.harness.run.execute import execute_job

    job = next(j for j in _quick_subset() if j.method == "ocsvm" and j.dataset == "digits")
    off = execute_job(job, None, "cpu", sealed="off", threads=2)
    on = execute_job(job, None, "cpu", sealed="require", threads=2)
    assert on.provenance["sealed"] is True
    assert off.provenance["threads"] == on.provenance["threads"] == 2  # ocsvm declares 1
    assert off.raw[""].tobytes() == on.raw[""].tobytes()


@needs_bwrap
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_job_bit_identical_sealed_and_unsealed() -> None:
    spec = spec_from_dict({"name": "fm", "seeds": [0],
                           "methods": [{"name": "iforest", "params": {"n_estimators": 50}}],
                           "datasets": [{"name": "fashion-mnist", "classes": ["trouser"]}]})
    # the system copy, named as a root: $OCCBENCH_DATA (CI sets it to ../shared/data for the
    # other real-data tests) is an explicit root, which never falls back to /usr/share/datasets
    root = "/usr/share/datasets"
    (job,) = expand(spec, root).jobs
    prov = _same_scores(job, root)
    # the 6,000 training images went in through the hand-over folder, not the dataset files
    assert prov["handover"] == {"write": 2}


# --------------------------------------------------------------------------------------------
# No sandbox: auto runs unsealed with a warning, --sealed fails closed
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/nonexistent/bwrap")
    sandbox._probe_cache.clear()
    yield
    monkeypatch.undo()
    sandbox._probe_cache.clear()


def _digits_job(method: str = "test-mean") -> Any:
    spec = spec_from_dict({"name": "d", "seeds": [0], "methods": [{"name": method}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs[0]


def test_without_bwrap_auto_runs_unsealed_and_require_fails_closed(no_bwrap: None) -> None:
    from occbench.harness.run.execute import execute_job

    p = sandbox.probe()
    assert not p.ok and "bubblewrap" in p.why and "apt-get install bubblewrap" in p.why
    out = execute_job(_digits_job(), None, "cpu", sealed="auto")
    assert out.status == "ok" and out.provenance["sealed"] is False
    assert "running UNSEALED" in out.log and "bubblewrap" in out.provenance["unsealed_reason"]
    out = execute_job(_digits_job(), None, "cpu", sealed="require")
    assert out.status == "failed" and out.error is not None
    assert out.error["type"] == "SandboxUnavailable"
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        sandbox.resolve("require")
    with pytest.warns(UserWarning, match="UNSEALED"):
        assert sandbox.resolve("auto")[0] is False


def test_cli_sealed_fails_closed_before_any_job(no_bwrap: None, tmp_path: Path) -> None:
    from occbench.harness.cli.main import app
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["run", "quick", "--store", str(tmp_path / "s"), "--runner",
                                 "serial", "--sealed", "--no-board"])
    assert r.exit_code == 2, r.output
    assert "sealed execution was required" in r.output
    assert not list((tmp_path / "s").glob("runs/*"))  # nothing ran


# --------------------------------------------------------------------------------------------
# The board marks unsealed and transductive entries; refresh --require-sealed refuses them
# --------------------------------------------------------------------------------------------


def test_board_marks_unsealed_and_transductive(tmp_path: Path) -> None:
    from occbench.leaderboard.table import aggregate, display_table, runs_frame

    spec = spec_from_dict({"name": "b", "seeds": [0],
                           "methods": [{"name": "test-mean"}, {"name": "test-transductive"}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    store = RunStore(tmp_path / "s")
    run_jobs(expand(spec).jobs, store, SerialRunner(in_process=True, sealed="off"))
    df = runs_frame(store)
    assert df["unsealed"].all()
    assert dict(zip(df["method"], df["transductive"], strict=True)) == {
        "test-mean": False, "test-transductive": True}
    shown = display_table(aggregate(df))["method"].tolist()
    assert any("test-transductive" in m and "[transductive]" in m and "[unsealed]" in m
               for m in shown)
    assert any(m.startswith("test-mean") and "[transductive]" not in m for m in shown)


def test_runs_without_the_independence_check_are_marked_unchecked(tmp_path: Path) -> None:
    """A run whose record has no answer to the test-independence check (made before runs
    recorded it) is not shown as independent: its entry says [unchecked], on the board, in the
    README table and on the site; an entry known to be transductive says only that."""
    from occbench.leaderboard.readme import headline
    from occbench.leaderboard.site import SiteOptions, build_site
    from occbench.leaderboard.table import aggregate, display_table, runs_frame

    spec = spec_from_dict({"name": "b", "seeds": [0, 1],
                           "methods": [{"name": "test-mean"}, {"name": "test-transductive"}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    store = RunStore(tmp_path / "s")
    run_jobs(expand(spec).jobs, store, SerialRunner(in_process=True, sealed="off"))
    df = runs_frame(store)
    assert not df["unchecked"].any()  # every fresh run answers the check
    # records as old stores hold them: the same runs (another seed) without the check's answer
    from occbench.harness.run.spec import Job

    mean0 = df[(df["method"] == "test-mean") & (df["seed"] == 0)]["job_id"].iloc[0]
    trans0 = df[(df["method"] == "test-transductive") & (df["seed"] == 0)]["job_id"].iloc[0]
    for jid, label in ((mean0, "old-mean"), (trans0, "test-transductive")):
        rec = store.run_record(jid)
        job = Job.from_dict({**rec["job"], "label": label, "seed": 7})
        prov = {k: v for k, v in rec["provenance"].items() if k != "test_independent"}
        store.write_run({**rec, "job_id": job.job_id, "job": job.to_dict(), "provenance": prov},
                        store.raw(jid), store.labels(jid), "")
        store.write_metrics(job.job_id)
    df = runs_frame(store)
    agg = aggregate(df)
    flags = {m: (bool(t), bool(u)) for m, t, u in
             zip(agg["method"], agg["transductive"], agg["unchecked"], strict=True)}
    assert flags == {"test-mean": (False, False), "old-mean": (False, True),
                     "test-transductive": (True, True)}
    shown = display_table(agg)["method"].tolist()
    assert [m for m in shown if "[unchecked]" in m] == ["old-mean [unsealed] [unchecked]"]
    assert any("test-transductive" in m and "[transductive]" in m and "[unchecked]" not in m
               for m in shown)
    assert "old-mean [unsealed] [unchecked]" in headline(store)
    build_site(store, tmp_path / "site", options=SiteOptions(n_boot=0))
    dataset_page = (tmp_path / "site" / "datasets" / "digits.html").read_text()
    assert dataset_page.count(">unchecked</span>") >= 1
    assert dataset_page.count(">transductive</span>") >= 1
    # the overview's cells carry the same tags: one unchecked entry, one transductive, all
    # unsealed (three entries, plus the legend's one of each)
    overview = (tmp_path / "site" / "index.html").read_text()
    assert overview.count(">unchecked</span>") == 1 + 1
    assert overview.count(">transductive</span>") == 1 + 1
    assert overview.count(">unsealed</span>") == 3 + 1


def test_refresh_require_sealed_refuses_to_publish_unsealed_runs(tmp_path: Path) -> None:
    from occbench.harness.cli.main import app
    from typer.testing import CliRunner

    spec = tmp_path / "spec.toml"
    spec.write_text('name = "r"\nseeds = [0]\n[[methods]]\nname = "test-mean"\n'
                    '[[datasets]]\nname = "digits"\nclasses = ["0"]\n')
    store = RunStore(tmp_path / "s")
    from occbench.harness.run.spec import load_spec

    run_jobs(expand(load_spec(str(spec))).jobs, store, SerialRunner(in_process=True,
                                                                    sealed="off"))
    r = CliRunner().invoke(app, ["refresh", str(spec), "--store", str(tmp_path / "s"),
                                 "--board-out", str(tmp_path / "board"), "--require-sealed"])
    assert r.exit_code == 2, r.output
    assert "not sealed" in r.output and not (tmp_path / "board").exists()


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            out += [k, *_descendants(k)]
    return out


def _sealed_children() -> list[int]:
    """This process's sealed method processes (the python inside bwrap)."""
    found = []
    for p in _descendants(os.getpid()):
        try:
            if b"_child_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                found.append(p)
        except OSError:
            pass
    return found


def _slow_job(**params: Any) -> Any:
    spec = spec_from_dict({"name": "s", "seeds": [0],
                           "methods": [{"name": "test-slow", "params": params}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs[0]


@needs_bwrap
def test_a_sealed_process_killed_from_outside_is_retried_in_a_fresh_one() -> None:
    """The OOM killer or a `kill -9` takes the sealed process in the middle of a job: the job
    runs again in a fresh one (as a killed worker is retried), and says so; a method that dies
    the same way each time is recorded WorkerDied after the retries; one that exits by itself
    is a result, not retried."""
    import signal
    import time

    from occbench.harness.run.execute import execute_job

    killed: list[int] = []

    def kill_once_mid_job() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sp = sandbox._current.get("cpu")
            try:
                busy = sp is not None and any(sp.handover.iterdir())  # a job's inputs are there
            except OSError:
                busy = False
            if busy:
                time.sleep(0.3)  # the method is asleep in fit by now
                for p in _sealed_children():
                    os.kill(p, signal.SIGKILL)
                    killed.append(p)
                return
            time.sleep(0.02)

    t = threading.Thread(target=kill_once_mid_job, daemon=True)
    t.start()
    out = execute_job(_slow_job(sleep=2.0), None, "cpu", sealed="require")
    t.join(5)
    assert killed, "the sealed process was never seen running the job"
    assert out.status == "ok", out.error
    assert out.provenance["worker_deaths"] == ["killed by SIGKILL"]
    assert out.provenance["sealed_pid"] not in killed  # the scores came from a fresh process
    assert "running the job again in a fresh one" in out.log

    dies = execute_job(_slow_job(die=True), None, "cpu", sealed="require", retries=1)
    assert dies.status == "failed" and dies.error is not None
    assert dies.error["type"] == "WorkerDied" and dies.error["origin"] == "runner"
    assert "2 attempts (killed by SIGKILL; killed by SIGKILL)" in dies.error["message"]

    spec = spec_from_dict({"name": "s", "seeds": [0], "methods": [{
        # relative: in the sealed process's own, private working folder
        "name": "test-attempts", "params": {"pid_file": "attempts",
                                            "kill_attempts": 99, "exit_code": 3}}],
        "datasets": [{"name": "digits", "classes": ["0"]}]})
    exits = execute_job(expand(spec).jobs[0], None, "cpu", sealed="require")
    assert exits.status == "failed" and exits.error is not None
    assert "exited with status 3" in exits.error["message"]
    assert exits.provenance["worker_deaths"] == ["exited with status 3"]  # once: not retried

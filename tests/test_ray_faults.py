"""Faults beyond a killed worker process: a node lost mid-job, and Ray's memory monitor.

Each test starts its own Ray (a simulated cluster, or an embedded Ray with a low memory
threshold), so this module never shares an instance with the others.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import ray_test_methods as tm  # noqa: E402
from occbench.harness import registry  # noqa: E402
from occbench.harness.run.driver import run_jobs  # noqa: E402
from occbench.harness.run.ray_runner import OOM_RETRIES, RayRunner, init_local_ray  # noqa: E402
from occbench.harness.run.spec import Job, expand, spec_from_dict  # noqa: E402
from occbench.harness.store.runstore import RunStore  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def own_ray() -> Iterator[None]:
    """No Ray left over from another module; the test-only methods registered."""
    if ray.is_initialized():
        ray.shutdown()
    added = [c for c in tm.ALL if c.name not in registry.methods]
    for cls in added:
        registry.methods.register(cls)
    yield
    if ray.is_initialized():
        ray.shutdown()
    for cls in added:
        registry.methods.unregister(cls.name)


def jobs_of(methods: list[dict[str, object]]) -> list[Job]:
    spec = spec_from_dict({"name": "faults", "seeds": [0], "methods": methods,
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs


def _wait_for(path: Path, lines: int, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if path.exists() and len(path.read_text().split()) >= lines:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{path} never got {lines} lines")


def _ancestors(pid: int) -> set[int]:
    """Parent, grandparent, ... of ``pid`` (Linux /proc)."""
    out: set[int] = set()
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised name
        out.add(pid)
    return out


def test_job_on_a_lost_node_is_retried_on_another(tmp_path: Path) -> None:
    """The (fake-)GPU node running a GPU job dies mid-job: Ray retries the job on the other GPU
    node, and the store holds one good run from that node."""
    fast_health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                   "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "num_gpus": 0,
                                      "object_store_memory": 80 * 2**20,
                                      "_system_config": fast_health})
    try:
        gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 2**20)
                     for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        pids = tmp_path / "pids"
        jobs = jobs_of([{"name": "ray-probe"},
                        {"name": "ray-pid-sleeper",
                         "params": {"pid_file": str(pids), "gpus": 1.0, "sleep_s": 300.0}}])
        lost: dict[str, str] = {}

        def lose_the_node() -> None:
            _wait_for(pids, 1)  # the GPU job is running
            ancestors = _ancestors(int(pids.read_text().split()[0]))
            (node,) = [n for n in gpu_nodes  # the node whose raylet started that worker
                       if n.all_processes["raylet"][0].process.pid in ancestors]
            lost["id"] = node.node_id
            cluster.remove_node(node, allow_graceful=False)

        killer = threading.Thread(target=lose_the_node, daemon=True)
        killer.start()
        store = RunStore(tmp_path / "store")
        s = run_jobs(jobs, store, RayRunner(max_retries=2, sealed="off"))  # pid file in tmp
        killer.join(timeout=5)
        assert (s.ok, s.failed) == (2, 0)
        assert len(pids.read_text().split()) == 2  # the first attempt died with its node
        prov = store.record(jobs[1].job_id)["provenance"]
        others = {n.node_id for n in gpu_nodes} - {lost["id"]}
        assert prov["ray_node_id"] in others
        assert prov["ray_gpu_ids"] == ["0"]
        assert not store.failures()
        assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_job_killed_by_the_memory_monitor_is_recorded_out_of_memory(tmp_path: Path) -> None:
    """A job that allocates far more than it declared is killed by Ray's memory monitor, retried
    OOM_RETRIES times, then recorded ``OutOfMemory``; the rest of the grid finishes.

    Independent of other processes' memory: the hog allocates until the machine's used memory
    (as the monitor reads it, measured live) is 1 GiB past the threshold, however much that
    takes, so memory others free meanwhile cannot save it; the threshold sits 3 GiB above the
    use measured just before Ray starts, and jobs run one at a time (the probe before the hog,
    each retry after the previous attempt's memory is freed), so only growth by others of
    more than the headroom minus Ray's own processes within those seconds could touch the
    probe.
    """
    from ray._private import utils as ray_utils  # the memory figures the monitor itself reads

    headroom = 3 * 2**30
    total, used = ray_utils.get_system_memory(), ray_utils.get_used_memory()
    if used + headroom + 2 * 2**30 > 0.9 * total:
        pytest.skip(f"this machine has too little free memory ({(total - used) / 2**30:.1f} GiB)")
    threshold = used + headroom
    init_local_ray(num_cpus=2, system_config={"memory_usage_threshold": threshold / total,
                                              "memory_monitor_refresh_ms": 100})
    pids = tmp_path / "pids"
    jobs = jobs_of([{"name": "ray-probe"},
                    {"name": "ray-memory-hog",
                     "params": {"pid_file": str(pids), "hog_mb": int(total / 2**20),
                                "until_used_mb": int((threshold + 2**30) / 2**20)}},
                    {"name": "ray-probe", "params": {"tag": "after"}}])
    store = RunStore(tmp_path / "store")
    # unsealed: the pid file is in tmp (a sandbox hides it), and the monitor kills the worker
    s = run_jobs(jobs, store, RayRunner(max_retries=1, max_concurrent=1, sealed="off"))
    assert (s.ok, s.failed) == (2, 1), store.failures()
    assert store.job_ids() == sorted([jobs[0].job_id, jobs[2].job_id])
    (fail,) = store.failures()
    assert fail["job_id"] == jobs[1].job_id
    assert fail["error"]["type"] == "OutOfMemory"
    assert "memory_mb=64" in fail["error"]["message"]
    # killed for memory on its first run and on each of its OOM retries, then given up
    assert len(set(pids.read_text().split())) == OOM_RETRIES + 1


def test_job_clock_killed_by_the_memory_monitor_is_replaced_and_limits_still_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's memory monitor may kill the job clock rather than the hog (since Ray 2.56 it
    picks the most recently started task, often the clock's poll): the poll then raises
    ``OutOfMemoryError``, not ``RayActorError``. The driver makes a new clock and goes on, and
    a job past its limit is still stopped (CI once crashed here mid-grid)."""
    from occbench.harness.run import ray_runner as rr

    init_local_ray(num_cpus=1)
    runner = RayRunner(max_concurrent=1, sealed="off", default_time_limit_s=1.0)
    runner._clock = rr._new_clock()
    old_clock = runner._clock
    real_get = rr.ray.get
    polls: list[str] = []

    def get(refs: object, *a: object, **k: object) -> object:
        if not polls:  # the first clock poll: killed for memory
            polls.append("oom")
            raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low "
                                                  "on memory.")
        polls.append("ok")
        return real_get(refs, *a, **k)

    sleeper = ray.remote(num_cpus=0)(lambda: time.sleep(60))
    ref = sleeper.remote()
    job = jobs_of([{"name": "ray-probe"}])[0]
    inflight = {ref: rr._InFlight(job, time.monotonic())}
    stopped: list[tuple[str, str]] = []
    monkeypatch.setattr(rr.ray, "get", get)
    runner._check_time_limits(inflight, lambda j, out: stopped.append((j.job_id, out.status)))
    assert runner._clock is not old_clock  # a new clock
    assert inflight[ref].started is not None  # counted from now: never cut short
    assert not stopped
    time.sleep(1.2)
    runner._check_time_limits(inflight, lambda j, out: stopped.append((j.job_id, out.status)))
    assert polls == ["oom", "ok"]
    assert [s[0] for s in stopped] == [job.job_id] and not inflight  # the limit still held
    monkeypatch.undo()
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(ref, timeout=30)
    runner.close()


# --------------------------------------------------------------------------------------------
# `occbench run --runner ray` as a terminal runs it: Ctrl-C to the process group, kill -9
# --------------------------------------------------------------------------------------------


def test_a_job_retried_by_ray_gets_its_whole_time_limit_again(tmp_path: Path) -> None:
    """The first attempt runs 14 s of a 30 s limit, then its worker dies; Ray retries the task
    in a new worker, which needs 17 s more. The limit counts from the retry's own start (as the
    serial runner's does), so the job succeeds; counted from the first start (before) it was
    stopped, as 14 + 17 s exceed 30 s whatever the overheads. The margins are wide on purpose:
    until the retry starts, the first attempt's clock runs on (the driver cannot see the worker
    die), so the first attempt, the death and the new worker's start must fit in 30 s."""
    init_local_ray(num_cpus=1)
    pids = tmp_path / "pids"
    jobs = jobs_of([{"name": "ray-late-death", "params": {
        "pid_file": str(pids), "die_after_s": 14.0, "sleep_s": 17.0}}])
    store = RunStore(tmp_path / "store")
    runner = RayRunner(max_retries=1, max_concurrent=1, sealed="off", default_time_limit_s=30.0)
    try:
        s = run_jobs(jobs, store, runner)
    finally:
        runner.close()
    assert (s.ok, s.failed) == (1, 0), store.failures()
    assert len(pids.read_text().split()) == 2  # died once, the retry ran in another worker
    (rec,) = store.records()
    assert rec["provenance"]["wall_time_s"] >= 17.0  # the retry's own run


def _ray_cli(tmp_path: Path, sleeps: list[float]) -> tuple[subprocess.Popen[str], list[Path]]:
    """Start `occbench run --runner ray` (own session, like a terminal's job) on one sleeping
    job per entry of ``sleeps``; return once every job is running in a worker."""
    files = [tmp_path / f"pids{i}" for i in range(len(sleeps))]
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "sig"\nseeds = [0]\n' + "".join(
        f'[[methods]]\nname = "test-attempts"\nparams = {{ pid_file = "{f}", sleep = {t} }}\n'
        for f, t in zip(files, sleeps, strict=True))
        + '[[datasets]]\nname = "digits"\nclasses = ["0"]\n')
    tests = Path(__file__).parent
    env = {**os.environ, "OCCBENCH_PLUGIN_MODULES": "plugins_for_tests",
           "PYTHONPATH": str(tests) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "occbench.harness", "run", str(spec), "--store",
           str(tmp_path / "s"), "--runner", "ray", "--no-board",
           "--max-concurrent", str(len(sleeps)), "--unsealed",  # pid files in tmp
           "--no-check-methods"]  # the pre-run check would fit (and write a pid) in the driver
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    t0 = time.monotonic()
    while not all(f.exists() and f.read_text().strip() for f in files):
        if p.poll() is not None or time.monotonic() - t0 > 240:
            p.kill()
            raise AssertionError(p.communicate(timeout=30)[0])
        time.sleep(0.2)
    return p, files


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _session_pids(pgid: int) -> list[int]:
    """Processes still in process group ``pgid`` (Ray's own start in the driver's group)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def test_ctrl_c_under_ray_first_finishes_running_jobs_second_cancels(tmp_path: Path) -> None:
    """First Ctrl-C to the process group: the count is shown, no job is lost to the signal and
    the short one finishes and is stored; second: the long one is cancelled, the command exits
    within 10 s and no worker is left."""
    p, files = _ray_cli(tmp_path, [4.0, 600.0])
    workers = [int(f.read_text().split()[0]) for f in files]
    os.killpg(p.pid, signal.SIGINT)
    store = RunStore(tmp_path / "s")
    t0 = time.monotonic()
    while len(store.job_ids()) < 1 and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    assert len(store.job_ids()) == 1 and p.poll() is None  # the short job finished, stored
    assert _pid_alive(workers[1])  # the long one still runs
    os.killpg(p.pid, signal.SIGINT)
    t1 = time.monotonic()
    out = p.communicate(timeout=60)[0]
    assert time.monotonic() - t1 < 10, out
    assert "finishing 2 running jobs; Ctrl-C again to cancel them" in out
    assert "cancelling 1 running job" in out
    assert p.returncode in (1, 130), out
    assert not store.failures() and len(store.job_ids()) == 1
    t2 = time.monotonic()
    while any(_pid_alive(w) for w in workers) and time.monotonic() - t2 < 10:
        time.sleep(0.2)
    assert not any(_pid_alive(w) for w in workers)


def test_a_killed_ray_driver_leaves_no_worker(tmp_path: Path) -> None:
    """``kill -9`` of `occbench run --runner ray`: its workers (and Ray's raylet and GCS) go
    with it. (Ray's per-node dashboard and runtime-env agents notice later, within about a
    minute; they run no job.)"""
    p, files = _ray_cli(tmp_path, [600.0, 600.0])
    workers = [int(f.read_text().split()[0]) for f in files]
    p.kill()
    p.communicate(timeout=30)
    def left() -> list[str]:
        out = []
        for q in _session_pids(p.pid):
            with contextlib.suppress(OSError):
                if _pid_alive(q):
                    out.append(Path(f"/proc/{q}/cmdline").read_text().replace("\0", " ")[:120])
        return [c for c in out if "raylet" in c or "gcs_server" in c or "run_in_worker" in c]

    # Ray notices its driver's death by heartbeats: allow for a loaded 2-core machine
    t0 = time.monotonic()
    while (any(_pid_alive(w) for w in workers) or left()) and time.monotonic() - t0 < 90:
        time.sleep(0.5)
    assert not any(_pid_alive(w) for w in workers)
    assert not left(), left()
    for q in _session_pids(p.pid):  # tidy up the agents rather than wait for them
        with contextlib.suppress(OSError):
            os.kill(q, signal.SIGKILL)

"""Faults beyond a killed worker process: a node lost mid-job, and Ray's memory monitor.

Each test starts its own Ray (a simulated cluster, or an embedded Ray with a low memory
threshold), so this module never shares an instance with the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import ray_test_methods as tm  # noqa: E402
from occbench.harness import registry  # noqa: E402
from occbench.harness.driver import run_jobs  # noqa: E402
from occbench.harness.ray_runner import OOM_RETRIES, RayRunner, init_local_ray  # noqa: E402
from occbench.harness.spec import Job, expand, spec_from_dict  # noqa: E402
from occbench.harness.store import RunStore  # noqa: E402
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
        s = run_jobs(jobs, store, RayRunner(max_retries=2))
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
    OOM_RETRIES times, then recorded ``OutOfMemory``; the rest of the grid finishes."""
    from ray._private import utils as ray_utils  # the memory figures the monitor itself reads

    total, used = ray_utils.get_system_memory(), ray_utils.get_used_memory()
    headroom = 1.5 * 2**30  # Ray's processes and the workers' imports fit in this
    if used + headroom + 2 * 2**30 > 0.9 * total:
        pytest.skip(f"this machine has too little free memory ({(total - used) / 2**30:.1f} GiB)")
    init_local_ray(num_cpus=2, system_config={"memory_usage_threshold": (used + headroom) / total,
                                              "memory_monitor_refresh_ms": 100})
    pids = tmp_path / "pids"
    hog_mb = int((headroom + 2 * 2**30) / 2**20)  # always crosses the threshold
    jobs = jobs_of([{"name": "ray-probe"},
                    {"name": "ray-memory-hog", "params": {"pid_file": str(pids),
                                                           "hog_mb": hog_mb}}])
    store = RunStore(tmp_path / "store")
    s = run_jobs(jobs, store, RayRunner(max_retries=1))
    assert (s.ok, s.failed) == (1, 1)
    assert store.job_ids() == [jobs[0].job_id]
    (fail,) = store.failures()
    assert fail["job_id"] == jobs[1].job_id
    assert fail["error"]["type"] == "OutOfMemory"
    assert "memory_mb=64" in fail["error"]["message"]
    # killed for memory on its first run and on each of its OOM retries, then given up
    assert len(set(pids.read_text().split())) == OOM_RETRIES + 1

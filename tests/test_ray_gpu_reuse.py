"""GPU workers are reused on a multi-GPU node (simulated: ``ray.cluster_utils`` fake GPUs).

One node with 2 CPUs and 2 (fake) GPUs. GPU jobs used to get a fresh process each on such a
node (``max_calls=1``: a CUDA context cannot follow a changed ``CUDA_VISIBLE_DEVICES``); now a
worker sees every GPU of its node, runs each task on the GPU Ray assigned it (by index), keeps
its data cache between jobs, and is retired after a failed GPU job.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import ray_test_methods as tm  # noqa: E402
from occbench.harness import registry  # noqa: E402
from occbench.harness.run.driver import run_jobs  # noqa: E402
from occbench.harness.run.ray_runner import RayRunner, cuda_index  # noqa: E402
from occbench.harness.run.runner import SerialRunner  # noqa: E402
from occbench.harness.run.spec import Job, expand, spec_from_dict  # noqa: E402
from occbench.harness.store.runstore import RunStore  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.ray


def test_cuda_index_maps_rays_gpu_id_to_the_visible_position() -> None:
    assert cuda_index(["1"], None) == 1  # the node's Ray saw every GPU
    assert cuda_index(["3"], "2,3") == 1  # node started with CUDA_VISIBLE_DEVICES=2,3
    assert cuda_index(["GPU-ab"], "GPU-cd, GPU-ab") == 1  # UUIDs
    assert cuda_index(["0"], "") == 0


@pytest.fixture(scope="module")
def two_gpu_node() -> Iterator[None]:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2,
                                                      "object_store_memory": 80 * 2**20})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    registry.methods.register(tm.GpuProbe)
    yield
    registry.methods.unregister(tm.GpuProbe.name)
    ray.shutdown()
    c.shutdown()


def gpu_jobs(n: int, fail_first: bool = False) -> list[Job]:
    methods = [{"name": "ray-gpu-probe", "params": {"tag": f"j{i}", "gpus": 0.25,
                                                     "fail": fail_first and i == 0}}
               for i in range(n)]
    spec = spec_from_dict({"name": "g", "seeds": [0], "methods": methods,
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs


def test_gpu_workers_are_reused_with_a_data_cache_and_the_same_scores(
        two_gpu_node: None, tmp_path: Path) -> None:
    jobs = gpu_jobs(6)
    store = RunStore(tmp_path / "ray")
    runner = RayRunner(max_concurrent=2, sealed="off")
    assert max(n.get("GPU", 0) for n in runner.nodes()) == 2
    s = run_jobs(jobs, store, runner)
    assert (s.ok, s.failed) == (6, 0)
    provs = [store.record(j.job_id)["provenance"] for j in jobs]
    assert all(p["ray_resources"]["GPU"] == 0.25 and p["device"] == "cpu" for p in provs)
    # the worker sees every GPU of the node and knows its task's one by index
    assert all(p["cuda_visible_devices"] is None for p in provs)
    assert all(p["ray_cuda_index"] == int(p["ray_gpu_ids"][0]) for p in provs)
    pids = Counter(p["ray_worker_pid"] for p in provs)
    assert len(pids) <= 3 and max(pids.values()) >= 2, pids  # fresh processes: 6 pids
    # in each worker the first job on the split loads it, every later one finds it loaded
    for pid in pids:
        caches = [p["data_cache"] for p in provs if p["ray_worker_pid"] == pid]
        assert caches[0] == "miss" and set(caches[1:]) <= {"hit"}, caches
    # scores are those of the serial runner, and of fresh GPU processes
    serial, fresh = RunStore(tmp_path / "serial"), RunStore(tmp_path / "fresh")
    # (in process: a spawned serial worker does not know the runtime-registered test method)
    assert run_jobs(jobs, serial, SerialRunner(in_process=True, sealed="off")).ok == 6
    s3 = run_jobs(jobs, fresh, RayRunner(max_concurrent=2, sealed="off",
                                         reuse_gpu_workers=False))
    assert s3.ok == 6
    fresh_pids = {fresh.record(j.job_id)["provenance"]["ray_worker_pid"] for j in jobs}
    assert len(fresh_pids) == 6  # the baseline really gives each job its own process
    for j in jobs:
        got = store.scores(j.job_id)["raw"]
        np.testing.assert_array_equal(got, serial.scores(j.job_id)["raw"])
        np.testing.assert_array_equal(got, fresh.scores(j.job_id)["raw"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failed_gpu_job_retires_its_worker(two_gpu_node: None, tmp_path: Path) -> None:
    jobs = gpu_jobs(3, fail_first=True)
    store = RunStore(tmp_path / "store")
    s = run_jobs(jobs, store, RayRunner(max_concurrent=1, sealed="off"))
    assert (s.ok, s.failed) == (2, 1)
    (fail,) = store.failures()
    # the method's own error is the record (not a dead worker), with the worker retired
    assert fail["error"]["type"] == "RuntimeError" and "CUDA error" in fail["error"]["message"]
    assert fail["provenance"]["ray_worker_retired"] is True
    bad = fail["provenance"]["ray_worker_pid"]
    later = [store.record(j.job_id)["provenance"] for j in jobs[1:]]
    assert all(p["ray_worker_pid"] != bad and p["ray_worker_retired"] is False for p in later)
    assert later[0]["ray_worker_pid"] == later[1]["ray_worker_pid"]  # ok jobs: reused
    deadline = time.time() + 30
    while _alive(bad) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(bad)

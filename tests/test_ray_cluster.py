"""The Ray runner on a simulated two-node cluster with fake GPUs (``ray.cluster_utils``).

Head: 1 CPU, no GPU. Worker node: 2 CPUs and 1 (fake) GPU. Jobs of a method declaring
``gpus=0.5`` must all land on the GPU node, two at a time on its one GPU. (Each new worker
process imports the plugins, several CPU-seconds, so the test keeps the number of workers low.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import ray_test_methods as tm  # noqa: E402
from occbench.harness import registry  # noqa: E402
from occbench.harness.run.driver import run_jobs  # noqa: E402
from occbench.harness.run.ray_runner import RayRunner  # noqa: E402
from occbench.harness.run.spec import expand, spec_from_dict  # noqa: E402
from occbench.harness.store.runstore import RunStore  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                      "object_store_memory": 80 * 2**20})
    gpu_node = c.add_node(num_cpus=2, num_gpus=1, object_store_memory=80 * 2**20)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    registry.methods.register(tm.SleepProbe)
    yield {"gpu_node_id": gpu_node.node_id}
    registry.methods.unregister(tm.SleepProbe.name)
    ray.shutdown()
    c.shutdown()


def test_fractional_gpu_jobs_are_placed_by_resources_and_pack(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    methods = [{"name": "ray-probe", "params": {"sleep_s": 5.0, "gpus": 0.5, "cpus": 0.5,
                                                 "tag": f"g{i}"}} for i in range(4)]
    spec = spec_from_dict({"name": "c", "seeds": [0], "methods": methods,
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    jobs = expand(spec).jobs
    store = RunStore(tmp_path / "store")
    runner = RayRunner(max_concurrent=len(jobs))
    assert runner.nodes() and max(n.get("GPU", 0) for n in runner.nodes()) == 1
    s = run_jobs(jobs, store, runner)
    assert (s.ok, s.failed) == (len(jobs), 0)
    intervals = []
    for j in jobs:
        prov = store.record(j.job_id)["provenance"]
        assert prov["ray_node_id"] == cluster["gpu_node_id"]  # the only node with a GPU
        assert prov["ray_gpu_ids"] == ["0"] and prov["ray_resources"]["GPU"] == 0.5
        # GPU workers see the node's GPUs (Ray does not narrow CUDA_VISIBLE_DEVICES for them,
        # so they can be reused) and run the job on its GPU by index
        assert prov["cuda_visible_devices"] is None and prov["ray_cuda_index"] == 0
        assert prov["device"] == "cpu"  # fake GPU: no CUDA, so the job ran on cpu
        line = next(ln for ln in store.log(j.job_id).splitlines() if "interval" in ln)
        t0, t1 = map(float, line.split("interval ", 1)[1].split()[:2])
        intervals.append((t0, t1))
    # most jobs running at one instant: 2 share the GPU (0.5 each), never more
    events = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    running = peak = 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    assert peak == 2


def test_gpu_jobs_fail_fast_when_no_node_has_enough(cluster: dict[str, Any],
                                                     tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "c", "seeds": [0],
                           "methods": [{"name": "ray-probe", "params": {"gpus": 2.0}}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    store = RunStore(tmp_path / "store")
    s = run_jobs(expand(spec).jobs, store, RayRunner(device="cuda"))
    assert s.failed == 1
    (fail,) = store.failures()
    assert fail["error"]["type"] == "Infeasible"
    assert "largest node has 1" in fail["error"]["message"]

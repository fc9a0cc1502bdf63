"""Scheduling overhead and grid wall time: Ray runner vs serial runner on this machine.

Two measurements, each into fresh temporary stores:

1. **Overhead per job**: ``--n-tiny`` near-no-op jobs (OC-SVM on one ``digits`` class, a few
   milliseconds of fitting and scoring each; seeds make them distinct jobs). Overhead per job =
   driver wall time / jobs − the mean in-worker time (load + fit + score). Ray is measured with
   one job in flight (pure per-job cost) and with its default concurrency (one per CPU).
   Ray's start-up is reported separately and not counted in the per-job figures.
2. **Grid wall time**: a whole spec (default: the built-in ``quick``, 99 jobs) with each runner.

Two optional comparisons, each a ratio against a baseline measured beside it in the same run:

3. ``--gpu-reuse N``: N short GPU jobs (``dcae``, 1 epoch, ``gpus=0.25``, one ``digits`` class,
   N seeds) on a *simulated* node with 2 fake GPUs (``ray.cluster_utils``; the jobs run on CPU),
   with GPU workers reused (``RayRunner()``) vs a fresh process per GPU job
   (``RayRunner(reuse_gpu_workers=False)``, the old behaviour). Reports wall time per job, the
   worker processes used and the data-cache hits of each, and ``fresh / reused``.
4. ``--threads N``: N alternating pairs of serial jobs of ``--threads-method`` (default
   ``adacl``, 2 epochs) on synthetic 28x28 MNIST-format data, one thread vs every core
   (``SerialRunner(threads=1)`` vs ``SerialRunner()``): median in-worker time (load + fit +
   score) of each and ``one / all`` (above 1: all cores are faster), plus whether the scores
   were identical. On a machine busy with other work the figure says more about the load.

Run from the repository root::

    python bench/bench_scheduling.py                  # both, prints a table and JSON
    python bench/bench_scheduling.py --skip-grid      # overhead only (about a minute)
    python bench/bench_scheduling.py --json out.json
    python bench/bench_scheduling.py --only-extra --gpu-reuse 24 --threads 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from occbench.harness.run.driver import run_jobs
from occbench.harness.run.ray_runner import RayRunner, init_local_ray
from occbench.harness.run.runner import Runner, SerialRunner
from occbench.harness.run.spec import Job, expand, load_spec, spec_from_dict
from occbench.harness.store.runstore import RunStore


def tiny_jobs(n: int) -> list[Job]:
    """``n`` distinct, near-instant jobs (OC-SVM on digits class 0, one seed each)."""
    spec = spec_from_dict({"name": "tiny", "seeds": list(range(n)),
                           "methods": [{"name": "ocsvm"}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs


def timed_run(jobs: list[Job], runner: Runner) -> dict[str, Any]:
    """Run ``jobs`` into a fresh store; wall time and the in-worker time of each job."""
    with tempfile.TemporaryDirectory(prefix="occbench-bench-") as d:
        store = RunStore(Path(d) / "store")
        t0 = time.perf_counter()
        summary = run_jobs(jobs, store, runner)
        wall = time.perf_counter() - t0
        work = []
        for jid in store.job_ids():
            p = store.record(jid)["provenance"]
            work.append(float(p.get("load_time_s", 0)) + float(p.get("fit_time_s", 0))
                        + float(p.get("score_time_s", 0)))
    if summary.ok != len(jobs):
        raise RuntimeError(f"{summary.failed} of {len(jobs)} jobs failed: {summary.failures[:3]}")
    return {"jobs": len(jobs), "wall_s": round(wall, 2),
            "per_job_s": round(wall / len(jobs), 4),
            "work_per_job_s": round(statistics.fmean(work), 4),
            "overhead_per_job_s": round(wall / len(jobs) - statistics.fmean(work), 4)}


def gpu_reuse(n: int, node_cpus: int) -> dict[str, Any]:
    """Reused vs fresh GPU workers on a simulated node with 2 fake GPUs (see module doc)."""
    import ray
    from ray.cluster_utils import Cluster

    spec = spec_from_dict({"name": "gpu", "seeds": list(range(n)),
                           "methods": [{"name": "dcae", "params": {"epochs": 1}}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    jobs = expand(spec).jobs
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus, "num_gpus": 2,
                                                      "object_store_memory": 80 * 2**20})
    out: dict[str, Any] = {"jobs": n, "node": {"CPU": node_cpus, "GPU": 2}}
    try:
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        for name, reuse in (("fresh", False), ("reused", True)):
            with tempfile.TemporaryDirectory(prefix="occbench-bench-") as d:
                store = RunStore(Path(d) / "store")
                t0 = time.perf_counter()
                summary = run_jobs(jobs, store, RayRunner(reuse_gpu_workers=reuse,
                                                          sealed="off"))
                wall = time.perf_counter() - t0
                provs = [store.record(j)["provenance"] for j in store.job_ids()]
            if summary.ok != n:
                raise RuntimeError(f"{name}: {summary.failed} failed: {summary.failures[:2]}")
            out[name] = {"wall_s": round(wall, 2), "per_job_s": round(wall / n, 3),
                         "worker_pids": len({p["ray_worker_pid"] for p in provs}),
                         "data_cache_hits": sum(p.get("data_cache") == "hit" for p in provs),
                         "gpu_ids": sorted({g for p in provs for g in p["ray_gpu_ids"]}),
                         "gpu_share": sorted({p["ray_resources"].get("GPU") for p in provs})}
        out["fresh_over_reused"] = round(out["fresh"]["wall_s"] / out["reused"]["wall_s"], 2)
    finally:
        ray.shutdown()
        c.shutdown()
    return out


def thread_scaling(pairs: int, method: str, epochs: int) -> dict[str, Any]:
    """One thread vs every core, serially (see module doc), alternating to share the load."""
    import numpy as np
    from occbench.datasets.fakes import write_mnist
    from occbench.harness.run.runner import available_cores

    root = Path(tempfile.mkdtemp(prefix="occbench-bench-data-"))
    write_mnist(root / "mnist", n_train_per_class=600, n_test_per_class=200)
    spec = spec_from_dict({"name": "thr", "seeds": [0],
                           "methods": [{"name": method, "params": {"epochs": epochs}}],
                           "datasets": [{"name": "mnist", "classes": ["0"]}]})
    (job,) = expand(spec, str(root)).jobs
    runners = {"one": SerialRunner(threads=1, sealed="off"), "all": SerialRunner(sealed="off")}
    for r in runners.values():  # spawn + imports + first load, not counted
        run_jobs([job], RunStore(tempfile.mkdtemp()), r, str(root))
    work: dict[str, list[float]] = {"one": [], "all": []}
    scores: dict[str, Any] = {}
    for _ in range(pairs):
        for k, r in runners.items():
            with tempfile.TemporaryDirectory(prefix="occbench-bench-") as d:
                store = RunStore(Path(d) / "store")
                if run_jobs([job], store, r, str(root)).ok != 1:
                    raise RuntimeError(f"{method} failed with threads={r.threads}")
                p = store.record(job.job_id)["provenance"]
                work[k].append(float(p["load_time_s"]) + float(p["fit_time_s"])
                               + float(p["score_time_s"]))
                scores[k] = store.scores(job.job_id).raw
    for r in runners.values():
        r.close()
    med = {k: statistics.median(v) for k, v in work.items()}
    return {"method": method, "epochs": epochs, "pairs": pairs, "cores": available_cores(),
            "work_one_thread_s": round(med["one"], 3), "work_all_cores_s": round(med["all"], 3),
            "one_over_all": round(med["one"] / med["all"], 2),
            "scores_identical": bool(np.array_equal(scores["one"], scores["all"])),
            "scores_max_abs_diff": float(np.max(np.abs(scores["one"] - scores["all"])))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-tiny", type=int, default=40)
    ap.add_argument("--grid", default="quick", help="spec for the grid wall time")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--gpu-reuse", type=int, default=0, metavar="N",
                    help="also: N short GPU jobs, reused vs fresh workers (simulated GPUs)")
    ap.add_argument("--gpu-node-cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=0, metavar="N",
                    help="also: N pairs of serial jobs, one thread vs every core")
    ap.add_argument("--threads-method", default="adacl")
    ap.add_argument("--threads-epochs", type=int, default=2)
    ap.add_argument("--only-extra", action="store_true",
                    help="only the --gpu-reuse / --threads comparisons")
    args = ap.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.threads:
        out["threads"] = thread_scaling(args.threads, args.threads_method, args.threads_epochs)
        print(json.dumps({"threads": out["threads"]}), flush=True)
    if args.gpu_reuse:
        out["gpu_reuse"] = gpu_reuse(args.gpu_reuse, args.gpu_node_cpus)
        print(json.dumps({"gpu_reuse": out["gpu_reuse"]}), flush=True)
    if args.only_extra:
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")
        return

    jobs = tiny_jobs(args.n_tiny)
    serial = SerialRunner()
    run_jobs(jobs[:1], RunStore(tempfile.mkdtemp()), serial)  # spawn + imports, not counted
    out["tiny_serial"] = timed_run(jobs, serial)

    t0 = time.perf_counter()
    init_local_ray()
    out["ray_startup_s"] = round(time.perf_counter() - t0, 2)
    warm = RayRunner()
    run_jobs(tiny_jobs(os.cpu_count() or 1), RunStore(tempfile.mkdtemp()), warm)  # start workers
    out["tiny_ray_1_in_flight"] = timed_run(jobs, RayRunner(max_concurrent=1))
    out["tiny_ray_default"] = timed_run(jobs, RayRunner())

    if not args.skip_grid:
        grid = expand(load_spec(args.grid)).jobs
        out["grid"] = args.grid
        out["grid_ray"] = timed_run(grid, RayRunner())
        import ray

        ray.shutdown()
        out["grid_serial"] = timed_run(grid, serial)
    else:
        import ray

        ray.shutdown()
    serial.close()

    print(f"{'measurement':34s} {'jobs':>5s} {'wall s':>8s} {'per job s':>10s} "
          f"{'work s':>8s} {'overhead s':>11s}")
    for k, v in out.items():
        if isinstance(v, dict) and "overhead_per_job_s" in v:
            print(f"{k:34s} {v['jobs']:5d} {v['wall_s']:8.2f} {v['per_job_s']:10.4f} "
                  f"{v['work_per_job_s']:8.4f} {v['overhead_per_job_s']:11.4f}")
    print(f"ray start-up (embedded, not counted above): {out['ray_startup_s']} s")
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

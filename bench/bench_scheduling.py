"""Scheduling overhead and grid wall time: Ray runner vs serial runner on this machine.

Two measurements, each into fresh temporary stores:

1. **Overhead per job**: ``--n-tiny`` near-no-op jobs (OC-SVM on one ``digits`` class, a few
   milliseconds of fitting and scoring each; seeds make them distinct jobs). Overhead per job =
   driver wall time / jobs − the mean in-worker time (load + fit + score). Ray is measured with
   one job in flight (pure per-job cost) and with its default concurrency (one per CPU).
   Ray's start-up is reported separately and not counted in the per-job figures.
2. **Grid wall time**: a whole spec (default: the built-in ``quick``, 99 jobs) with each runner.

Run from the repository root::

    python bench/bench_scheduling.py                  # both, prints a table and JSON
    python bench/bench_scheduling.py --skip-grid      # overhead only (about a minute)
    python bench/bench_scheduling.py --json out.json
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

from occbench.harness.driver import run_jobs
from occbench.harness.ray_runner import RayRunner, init_local_ray
from occbench.harness.runner import Runner, SerialRunner
from occbench.harness.spec import Job, expand, load_spec, spec_from_dict
from occbench.harness.store import RunStore


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-tiny", type=int, default=40)
    ap.add_argument("--grid", default="quick", help="spec for the grid wall time")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count()}

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
        if isinstance(v, dict):
            print(f"{k:34s} {v['jobs']:5d} {v['wall_s']:8.2f} {v['per_job_s']:10.4f} "
                  f"{v['work_per_job_s']:8.4f} {v['overhead_per_job_s']:11.4f}")
    print(f"ray start-up (embedded, not counted above): {out['ray_startup_s']} s")
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

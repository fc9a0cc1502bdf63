"""The driver's cost per job, as ratios measured side by side in one run (issue 13, "Scale").

Four measurements, on no-op jobs (``test-mean`` of ``tests/plugins_for_tests.py`` on one
``digits`` class: 719 test items, well under a millisecond of work):

1. **Driver cost per job** (ms): what ``run_jobs`` spends per job in the driver alone —
   claim, label check, protocol, metrics, ``write_run``, ``write_metrics``, release — with a
   runner that replays one precomputed worker output (so no worker time is in it), into a fresh
   store. Its baseline is a **bare Ray task** on the same cluster: ``--jobs`` no-op tasks
   submitted at once and fetched with ``ray.get`` (wall / tasks, ms).
2. **Jobs/s through ``RayRunner``** on a simulated cluster (``ray.cluster_utils.Cluster``,
   ``--nodes`` nodes of ``--node-cpus`` CPUs each), after a warm-up that starts the workers,
   against bare Ray tasks/s on the same cluster.
3. **The file system's share**: the file operations of one run (a hidden folder, three
   files, a rename, a metrics file written aside and renamed) with nothing else, before and
   after measurement 1, in the same temporary directory. On a virtual disk this is kernel CPU
   time, and it varies by the minute; what the driver costs beyond it is the harness's.
4. **Driver memory**: resident memory (``/proc/self/statm``) after N and after 2N replayed jobs
   (after a warm-up), and what is left per job: job loggers in ``logging``'s manager and lock
   files.

Absolute figures depend on the machine and its load; the ratios are what to compare. Run from
the repository root::

    nice -n 10 python bench/bench_driver.py --jobs 300 --json out.json

``--in-flight 4,8,16`` adds RayRunner's jobs/s with that many jobs in flight at most (beyond
the cluster's CPUs, tasks wait queued at their node).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
# the no-op method lives with the tests; workers import it through these (set before Ray)
os.environ["OCCBENCH_PLUGIN_MODULES"] = "plugins_for_tests"
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, str(TESTS))

from occbench.harness.run.driver import run_jobs  # noqa: E402
from occbench.harness.run.execute import JobOutput, execute_job  # noqa: E402
from occbench.harness.run.runner import ClaimFn, DoneFn, Runner, StopFn  # noqa: E402
from occbench.harness.run.spec import Job, expand, spec_from_dict  # noqa: E402
from occbench.harness.store.runstore import RunStore  # noqa: E402


def noop_jobs(n: int, offset: int = 0) -> list[Job]:
    """``n`` distinct no-op jobs (``test-mean`` on digits class 0, one seed each)."""
    spec = spec_from_dict({"name": "noop", "seeds": list(range(offset, offset + n)),
                           "methods": [{"name": "test-mean"}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs


class ReplayRunner(Runner):
    """Hands every claimed job the same precomputed worker output (under the job's id): what
    remains of ``run_jobs`` is the driver's own cost."""

    name = "replay"

    def __init__(self, template: JobOutput) -> None:
        self.template = template

    def run(self, jobs: Sequence[Job], data_root: str | None, claim: ClaimFn, done: DoneFn,
            stopped: StopFn) -> None:
        for j in jobs:
            if claim(j):
                done(j, dataclasses.replace(self.template, job_id=j.job_id,
                                            provenance=dict(self.template.provenance)))


def rss_mib() -> float:
    """This process's resident memory now (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def job_loggers() -> int:
    return sum(1 for n in logging.Logger.manager.loggerDict if n.startswith("occbench.job."))


def driver_cost(template: JobOutput, n: int, writers: int | None = None) -> dict[str, Any]:
    """ms per job of run_jobs with the replay runner, and memory after N and 2N jobs.
    ``writers``: run_jobs's store-writer threads (None: its default; 0: every run written
    before the next job, as before the writers)."""
    kw = {} if writers is None else {"writers": writers}
    with tempfile.TemporaryDirectory(prefix="occbench-bench-") as d:
        store = RunStore(Path(d) / "store")
        # warm-up: imports, caches
        run_jobs(noop_jobs(20, 10**6), store, ReplayRunner(template), **kw)
        rss0 = rss_mib()
        t0 = time.perf_counter()
        s1 = run_jobs(noop_jobs(n), store, ReplayRunner(template), **kw)
        wall = time.perf_counter() - t0
        rss1 = rss_mib()
        s2 = run_jobs(noop_jobs(n, n), store, ReplayRunner(template), **kw)
        rss2 = rss_mib()
        # the shared claims file stays (empty); anything else is left behind per job
        locks = sum(1 for p in store.locks_dir.iterdir()
                    if p.name != "claims" or p.stat().st_size)
    if s1.ok != n or s2.ok != n:
        raise RuntimeError(f"replayed jobs failed: {(s1.failures + s2.failures)[:3]}")
    return {"jobs": n, "ms_per_job": round(wall / n * 1e3, 3),
            "rss_mib_after_warmup": round(rss0, 1), "rss_mib_after_n": round(rss1, 1),
            "rss_mib_after_2n": round(rss2, 1),
            "rss_kib_per_job_second_n": round((rss2 - rss1) * 1024 / n, 2),
            "job_loggers_left": job_loggers(), "lock_files_left": locks}


def file_pattern(n: int) -> dict[str, Any]:
    """The file system's share of a run, without the harness: the operations ``write_run`` and
    ``write_metrics`` make for a run (a hidden folder, three files of a no-op run's sizes, its
    rename into ``runs/``, a metrics file written aside and renamed over), ``n`` times in a
    fresh folder of the same temporary directory (ms per run, wall and CPU: on a virtual disk
    the kernel's work shows as this process's CPU time)."""
    raw, rec, met = os.urandom(9000), os.urandom(1500), os.urandom(2000)
    with tempfile.TemporaryDirectory(prefix="occbench-bench-") as d:
        runs, mdir = Path(d) / "runs", Path(d) / "metrics"
        runs.mkdir()
        mdir.mkdir()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            tmp = f"{runs}/.{i:020x}.tmp"
            os.mkdir(tmp)
            for name, data in (("raw.parquet", raw), ("log.txt", b""), ("record.json", rec)):
                with open(f"{tmp}/{name}", "wb") as f:
                    f.write(data)
            os.rename(tmp, f"{runs}/{i:020x}")
            with open(f"{mdir}/.{i:020x}.tmp", "wb") as f:
                f.write(met)
            os.replace(f"{mdir}/.{i:020x}.tmp", f"{mdir}/{i:020x}.json")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"runs": n, "ms_per_run": round(wall / n * 1e3, 3),
            "cpu_ms_per_run": round(cpu / n * 1e3, 3)}


def bare_ray_tasks(n: int) -> dict[str, Any]:
    """A no-op Ray task's cost: n submitted at once, fetched together (ms per task)."""
    import ray

    @ray.remote(num_cpus=1)
    def noop(i: int) -> int:
        return i

    ray.get([noop.remote(i) for i in range(4 * 8)])  # warm-up: workers started
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    wall = time.perf_counter() - t0
    return {"tasks": n, "ms_per_task": round(wall / n * 1e3, 3),
            "tasks_per_s": round(n / wall, 1)}


def ray_runner_throughput(n: int, max_concurrent: int | None = None) -> dict[str, Any]:
    """No-op jobs/s through RayRunner on the running cluster, after a warm-up (at most
    ``max_concurrent`` jobs in flight; default: the cluster's CPUs)."""
    from occbench.harness.run.ray_runner import RayRunner

    with tempfile.TemporaryDirectory(prefix="occbench-bench-") as d:
        store = RunStore(Path(d) / "store")
        runner = RayRunner(sealed="off", max_concurrent=max_concurrent)
        warm = run_jobs(noop_jobs(16, 10**6), store, runner)  # starts a worker on every node
        t0 = time.perf_counter()
        s = run_jobs(noop_jobs(n), store, runner)
        wall = time.perf_counter() - t0
        nodes = {store.run_record(j)["provenance"].get("ray_node_id") for j in store.job_ids()}
    if s.ok != n or warm.ok != 16:
        raise RuntimeError(f"jobs failed through RayRunner: {(warm.failures + s.failures)[:3]}")
    return {"jobs": n, "wall_s": round(wall, 2), "jobs_per_s": round(n / wall, 1),
            "ms_per_job": round(wall / n * 1e3, 3), "nodes_used": len(nodes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=300, help="N (memory: N and 2N)")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--node-cpus", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--driver-only", action="store_true",
                    help="measurement 1's driver cost and 3 only (no Ray): e.g. to compare two "
                         "checkouts run one after the other")
    ap.add_argument("--in-flight", default="", metavar="A,B,...",
                    help="also measure RayRunner's jobs/s with at most A, B, ... jobs in "
                         "flight (queued at the nodes beyond their CPUs), twice each, "
                         "alternated")
    ap.add_argument("--inline", type=int, default=0, metavar="K",
                    help="also measure the driver cost with runs written inline (writers=0), "
                         "K times, alternated with K more of the default")
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    jobs = noop_jobs(1)
    template = execute_job(jobs[0], None, "cpu", "off")  # one real worker output
    if template.status != "ok":
        raise RuntimeError(f"the no-op job failed: {template.error}")
    out["files_before"] = file_pattern(args.jobs)
    out["driver"] = driver_cost(template, args.jobs)
    out["files_after"] = file_pattern(args.jobs)  # the disk's speed may change meanwhile
    if args.inline:
        # the baseline beside it: runs written inline (writers=0), alternated with the default
        inline, threaded = [], [out["driver"]["ms_per_job"]]
        for _ in range(args.inline):
            inline.append(driver_cost(template, args.jobs, writers=0)["ms_per_job"])
            threaded.append(driver_cost(template, args.jobs)["ms_per_job"])
        out["driver_writers_vs_inline"] = {
            "ms_per_job_writers": threaded, "ms_per_job_inline": inline,
            "median_ratio": round(float(sorted(threaded)[len(threaded) // 2]
                                        / sorted(inline)[len(inline) // 2]), 3)}
    if args.driver_only:
        import occbench.harness

        out["source"] = str(Path(occbench.harness.__file__).parent)
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")
        return

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.node_cpus, "object_store_memory": 80 * 2**20})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.node_cpus, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        out["bare_ray"] = bare_ray_tasks(args.jobs)
        out["ray_runner"] = ray_runner_throughput(args.jobs)
        caps = [int(c) for c in args.in_flight.split(",") if c.strip()]
        if caps:  # does a deeper queue hide the round trip between a node's jobs?
            out["ray_runner_in_flight"] = {str(c): [] for c in caps}
            for _ in range(2):
                for c in caps:
                    out["ray_runner_in_flight"][str(c)].append(
                        ray_runner_throughput(args.jobs, c)["jobs_per_s"])
        out["bare_ray_after"] = bare_ray_tasks(args.jobs)  # the load may have changed meanwhile
    finally:
        ray.shutdown()
        cluster.shutdown()
    bare = min(out["bare_ray"]["ms_per_task"], out["bare_ray_after"]["ms_per_task"])
    d = out["driver"]
    files = min(out["files_before"]["ms_per_run"], out["files_after"]["ms_per_run"])
    out["ratios"] = {
        "driver_cost_vs_bare_ray_task": round(d["ms_per_job"] / bare, 2),
        # what the harness adds to the disk's own work for a run
        "driver_cost_minus_files_ms": round(d["ms_per_job"] - files, 3),
        "ray_runner_job_vs_bare_ray_task": round(out["ray_runner"]["ms_per_job"] / bare, 2),
        "driver_share_of_ray_runner_job": round(d["ms_per_job"]
                                                / out["ray_runner"]["ms_per_job"], 2),
        "rss_growth_2n_vs_n": round((d["rss_mib_after_2n"] - d["rss_mib_after_warmup"])
                                    / max(d["rss_mib_after_n"] - d["rss_mib_after_warmup"],
                                          1e-9), 2),
    }
    print(f"driver cost per job:        {d['ms_per_job']:8.3f} ms  "
          f"({out['ratios']['driver_cost_vs_bare_ray_task']}x a bare Ray task, "
          f"{bare:.3f} ms; the file system's share of a run alone: {files:.3f} ms)")
    print(f"RayRunner, {args.nodes} nodes x {args.node_cpus} CPU: "
          f"{out['ray_runner']['jobs_per_s']:8.1f} jobs/s  "
          f"(bare Ray tasks: {out['bare_ray']['tasks_per_s']} / "
          f"{out['bare_ray_after']['tasks_per_s']} tasks/s before / after)")
    if "ray_runner_in_flight" in out:
        print("RayRunner jobs/s by jobs in flight (two runs each): " + "; ".join(
            f"{c}: {v}" for c, v in out["ray_runner_in_flight"].items()))
    print(f"driver RSS: {d['rss_mib_after_warmup']} MiB after warm-up, {d['rss_mib_after_n']} "
          f"after N={args.jobs}, {d['rss_mib_after_2n']} after 2N "
          f"({d['rss_kib_per_job_second_n']} KiB/job over the second N); left behind: "
          f"{d['job_loggers_left']} job loggers, {d['lock_files_left']} lock files")
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

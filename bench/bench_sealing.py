"""What sealing costs per job: the same jobs sealed (bubblewrap) and unsealed, side by side.

Each job runs unsealed and sealed in this process, alternating (U S U S ...) so that machine
load drifts affect both alike, after one warm-up job in each mode (imports, the sealed process's
start, the data caches): the figures are the steady per-job cost of a worker. The sealed
process's one-time start per worker is reported separately (``sandbox_start_s``).

    python bench/bench_sealing.py quick                  # the quick grid (99 jobs, CPU)
    python bench/bench_sealing.py quick --jobs 30
    python bench/bench_sealing.py ped2 --data-root ../shared/data
    python bench/bench_sealing.py ped2 --data-root ../shared/data --no-cache   # copies
    python bench/bench_sealing.py ped2 --data-root D --params '{"max_steps": 200}' --json o.json

Per job: ``extra_ms`` = sealed wall − unsealed wall (median and mean over jobs; the goal is
≤ 50 ms), ``ratio`` = total sealed wall / total unsealed wall (goal on a Ped2 job: ≤ 1.05), the
hand-over time and how the arrays went in (``link``: hard links to the frame cache's files;
``write``: copies). The Ped2 job is ``ae3d`` on CPU unless ``--method``/``--params`` say
otherwise (defaults below keep it to minutes on a laptop CPU; a GPU job's longer training only
lowers the ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from occbench.harness.run import sandbox
from occbench.harness.run.execute import execute_job
from occbench.harness.run.spec import expand, load_spec, spec_from_dict

PED2_PARAMS = {"size": 64, "width": 0.25, "max_steps": 60, "batch_size": 4,
               "precision": "fp32"}


def _one(job: Any, root: str | None, sealed: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = execute_job(job, root, "cpu", sealed=sealed)
    wall = time.perf_counter() - t0
    if out.status != "ok":
        raise SystemExit(f"{job.display} failed ({sealed}): {out.error}")
    return wall, out.provenance


def measure(jobs: list[Any], root: str | None) -> dict[str, Any]:
    if not sandbox.probe().ok:
        raise SystemExit(f"no sandbox here: {sandbox.probe().why}")
    t0 = time.perf_counter()
    _one(jobs[0], root, "off")
    _, prov = _one(jobs[0], root, "require")  # starts the sealed process
    warm = {"warmup_s": round(time.perf_counter() - t0, 2),
            "sandbox_start_s": prov.get("sandbox_start_s")}
    rows = []
    for j in jobs:
        u, _ = _one(j, root, "off")
        s, p = _one(j, root, "require")
        rows.append({"job": j.display, "unsealed_s": round(u, 4), "sealed_s": round(s, 4),
                     "extra_ms": round((s - u) * 1000, 2),
                     "handover_ms": round(1000 * float(p.get("handover_s", 0.0)), 2),
                     "overhead_ms": round(1000 * float(p.get("sealed_overhead_s", 0.0)), 2),
                     "handover": p.get("handover")})
        print(json.dumps(rows[-1]), file=sys.stderr)
    extra = [r["extra_ms"] for r in rows]
    tot_u = sum(r["unsealed_s"] for r in rows)
    tot_s = sum(r["sealed_s"] for r in rows)
    return {
        "jobs": len(rows), "sealed_by": sandbox.probe().by, **warm,
        "extra_ms_median": round(statistics.median(extra), 2),
        "extra_ms_mean": round(statistics.fmean(extra), 2),
        "overhead_ms_median": round(statistics.median(r["overhead_ms"] for r in rows), 2),
        "handover_ms_median": round(statistics.median(r["handover_ms"] for r in rows), 2),
        "unsealed_total_s": round(tot_u, 3), "sealed_total_s": round(tot_s, 3),
        "ratio": round(tot_s / tot_u, 4), "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["quick", "ped2"])
    ap.add_argument("--jobs", type=int, default=0, help="quick: first N jobs (0: all)")
    ap.add_argument("--data-root", default=None, help="ped2: the data root")
    ap.add_argument("--method", default="ae3d")
    ap.add_argument("--params", default=json.dumps(PED2_PARAMS), help="ped2: method params")
    ap.add_argument("--repeat", type=int, default=1, help="ped2: runs of the job per mode")
    ap.add_argument("--no-cache", action="store_true",
                    help="ped2: decode in memory (the arrays are then copied, not linked)")
    ap.add_argument("--json", default=None, help="write the result here too")
    a = ap.parse_args(argv)
    if a.what == "quick":
        jobs = expand(load_spec("quick")).jobs
        jobs = jobs[: a.jobs] if a.jobs else jobs
        res = measure(jobs, None)
    else:
        if not a.data_root:
            raise SystemExit("ped2 needs --data-root (the folder holding ped2/)")
        ds: dict[str, Any] = {"name": "ped2"}
        if a.no_cache:
            ds["params"] = {"cache": False}
        spec = spec_from_dict({"name": "bench-seal", "seeds": [0],
                               "methods": [{"name": a.method, "params": json.loads(a.params)}],
                               "datasets": [ds]})
        (job,) = expand(spec, a.data_root).jobs
        res = measure([job] * a.repeat, a.data_root)
        res["method"], res["params"] = a.method, json.loads(a.params)
    res["what"] = a.what
    res["command"] = "python bench/bench_sealing.py " + " ".join(argv or sys.argv[1:])
    summary = {k: v for k, v in res.items() if k != "rows"}
    print(json.dumps(summary, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

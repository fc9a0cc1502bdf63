"""Benchmark: CLI start-up, as ratios against bare Python measured beside it.

    python bench/bench_cli_startup.py [--repeat 15] [--store DIR] [--keep]

1. ``occbench --help`` against ``python -c "import typer"`` (goal: ratio <= 2.5).
2. A warm no-op rerun of a 300-job spec (``occbench run SPEC --store S``, every job already in
   the store, so nothing runs; the table is printed as usual, and "warm" means a rerun has
   printed it once: its table is then cached by store content) against
   ``python -c "import numpy, pandas"`` (goal: ratio <= 2.5).

The 300 jobs (ocsvm, iforest, kde × digits' 10 classes × 10 seeds) are run once first (serial
runner, a few minutes on 2 busy cores; ``--store`` keeps them between invocations). Each command
runs ``--repeat`` times, the two of a pair interleaved so that machine load hits both alike;
the minimum wall time of each is reported (the least disturbed run), and the median too.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name = "bench-300"
seeds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
[[methods]]
name = "ocsvm"
[[methods]]
name = "iforest"
params = { n_estimators = 10 }
[[methods]]
name = "kde"
[[datasets]]
name = "digits"
classes = "all"
"""


def occbench_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("occbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "occbench.harness"]


#: Both sides run as a user's shell runs them: bytecode caches written and read (with
#: PYTHONDONTWRITEBYTECODE set, occbench's own modules would be compiled on every start-up,
#: while typer, numpy and pandas come with their caches from installation).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env=ENV)
    return time.perf_counter() - t


def pair(a: list[str], b: list[str], repeat: int) -> dict[str, float]:
    wall(a), wall(b)  # warm the page cache and .pyc files
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(wall(a))
        tb.append(wall(b))
    return {"min_s": round(min(ta), 4), "median_s": round(statistics.median(ta), 4),
            "baseline_min_s": round(min(tb), 4),
            "baseline_median_s": round(statistics.median(tb), 4),
            "ratio_min": round(min(ta) / min(tb), 2),
            "ratio_median": round(statistics.median(ta) / statistics.median(tb), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--store", type=Path, default=None, help="store of the 300 jobs (kept)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="occbench-bench-cli-"))
    store = args.store or work / "store"
    spec = work / "bench-300.toml"
    spec.write_text(SPEC)
    occ = occbench_cmd()
    py = sys.executable
    t0 = time.perf_counter()
    subprocess.run([*occ, "run", str(spec), "--store", str(store), "--runner", "serial",
                    "--no-board"], stdout=subprocess.DEVNULL, check=True, env=ENV)
    fill_s = time.perf_counter() - t0
    check = subprocess.run([*occ, "run", str(spec), "--store", str(store), "--dry-run"],
                           capture_output=True, text=True, check=True, env=ENV).stdout
    assert "300 jobs, 300 in" in check, check[-500:]
    out = {
        "python": sys.version.split()[0],
        "help": pair([*occ, "--help"], [py, "-c", "import typer"], args.repeat),
        "noop_rerun_300": pair([*occ, "run", str(spec), "--store", str(store)],
                               [py, "-c", "import numpy, pandas"], args.repeat),
        "noop_rerun_300_no_board": pair(
            [*occ, "run", str(spec), "--store", str(store), "--no-board"],
            [py, "-c", "import numpy, pandas"], args.repeat),
        "first_fill_s": round(fill_s, 1),
        "repeat": args.repeat,
    }
    print(json.dumps(out, indent=1))
    if not args.keep and args.store is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

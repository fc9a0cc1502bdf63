"""One build of the board into a folder, timed by step: for rebuilds of large stores, and for
comparing two versions of the code on one store (run each checkout's copy in turn).

    python bench/bench_rebuild.py --store STORE --site SITE [--add-run SEED]

``--add-run SEED`` first adds one run to the store (a copy of its first run with that seed,
``leaderboard.synthetic.derive_run``: a new, verified run), as a new result arriving between
two builds. Prints one JSON line: the build's seconds, the run pages built and kept, the
seconds of each step (``bench_site.py --phases``'s steps) and the peak RSS of the building
process and of its largest child (MiB; a stat helper counts the builder's size when forked).
Make the store with ``bench_site.py --runs-dir STORE --keep`` (100,000 runs: ``--methods 50
--seeds 100``); the first call into a new SITE is a first build.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--site", type=Path, required=True)
    ap.add_argument("--add-run", type=int, default=None, metavar="SEED")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=0, help="build processes (0 = all cores)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_site
    from occbench.harness.store.runstore import RunStore
    from occbench.leaderboard.site import SiteOptions, build

    if args.add_run is not None:
        from occbench.leaderboard.synthetic import derive_run

        st = RunStore(args.store)
        derive_run(st, st.job_ids()[0], {"seed": args.add_run})  # as bench_site.py adds one
    spent = bench_site._time_phases()
    t = time.perf_counter()
    r = build(RunStore(args.store), args.site,
              options=SiteOptions(n_boot=args.bootstrap, jobs=args.jobs))
    total = time.perf_counter() - t
    print(json.dumps({
        "build_s": round(total, 2), "run_pages_built": r.runs_built,
        "run_pages_kept": r.runs_kept, "phases_s": {k: round(v, 2) for k, v in spent.items()},
        "peak_rss_mb": {
            "builder": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}}))


if __name__ == "__main__":  # (build processes are spawned: they import this module)
    main()

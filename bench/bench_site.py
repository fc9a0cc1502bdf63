"""Benchmark: build the leaderboard site for a synthetic store, as ratios against reading it.

    python bench/bench_site.py [--methods 5 --seeds 10 --classes 9] [--runs-dir DIR] [--keep]
                               [--bootstrap 1000] [--jobs 0] [--entries 1000] [--phases]

Writes a synthetic store (methods × seeds × (2 image datasets × classes + 2 video datasets of
8 videos × 3,000 frames); the defaults give 1,000 runs) with RunStore.write_run, then reports:

* ``runs``: run pages of the site at the end, the run the benchmark adds for its rebuild
  included (``run_pages_built_first``: those of the first build);
* ``read_all_s``: reading every file of the store once (the floor for any full build);
* ``build_s``: a first build into an empty folder, and its ratio to ``read_all_s``;
* ``rebuild_unchanged_s`` and ``rebuild_after_one_run_s``: the same folder built again with
  nothing changed, then after adding one run (only that run's page is built; the tables and
  overview, dataset and method pages are rebuilt), with the run pages built/kept;
* ``peak_rss_mb``: the building process and the largest build worker (``ru_maxrss``);
* ``byte_identical_rebuild``: the incremental folder equals a build from scratch;
* ``first_build_phases_s`` (``--phases``): the first build's seconds in the analysis (reading
  and verifying every run, the tables), the overview, dataset and method pages, the run-page
  keys and the run pages; ``rebuild_after_one_run_phases_s``: the same for the rebuild after
  one new run, with the row pass (inside the analysis) and the commit;
* ``pairwise``: paired comparisons of ``--entries`` entries on one dataset against today's
  cost of one scipy test per pair (timed on 200 pairs, times the pairs all-pairs would need).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard.site import SiteOptions, build
from occbench.leaderboard.stats import paired_test, pairwise_comparisons
from occbench.leaderboard.synthetic import SynthMethod, derive_run, make_store


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def _read_all(p: Path) -> float:
    t = time.perf_counter()
    for f in p.rglob("*"):
        if f.is_file():
            f.read_bytes()
    return time.perf_counter() - t


def _pairwise(entries: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rows = [{"method": f"m{j:04d}", "seed": s, "normal_class": str(c),
             "auc": 0.6 + 0.3 * j / entries + rng.normal(0, 0.03)}
            for j in range(entries) for s in range(3) for c in range(8)]
    df = pd.DataFrame(rows)
    t = time.perf_counter()
    out = pairwise_comparisons(df)
    t_new = time.perf_counter() - t
    wide = df.pivot_table(index=["seed", "normal_class"], columns="method", values="auc")
    cols = list(wide.columns)
    t = time.perf_counter()
    for i in range(200):
        a, b = cols[i], cols[(i * 7 + 1) % len(cols)]
        pair = wide[[a, b]].dropna()
        paired_test(pair[a].to_numpy(), pair[b].to_numpy())
    per_pair = (time.perf_counter() - t) / 200
    all_pairs = entries * (entries - 1) // 2
    return {"entries": entries, "pairs_compared": len(out), "seconds": round(t_new, 3),
            "one_scipy_test_per_pair_all_pairs_s_estimated": round(per_pair * all_pairs, 1),
            "one_scipy_test_per_pair_same_pairs_s_estimated": round(per_pair * len(out), 2),
            "speedup_same_pairs": round(per_pair * len(out) / t_new, 1)}


#: The steps of a build timed by ``--phases`` (module, attribute): the analysis (reading and
#: verifying every run, the tables), the overview/dataset/method pages, the run-page keys and
#: the run pages themselves; within the analysis, the row pass (reading, or the stats of the
#: row cache); the commit into ``--out``.
_PHASES = (("site", "analyze", "analysis"), ("table", "_rows", "analysis_row_pass"),
           ("_Builder", "overview", "overview_page"),
           ("_Builder", "dataset", "dataset_pages"), ("_Builder", "method", "method_pages"),
           ("site", "_run_page_keys", "run_page_keys"), ("site", "_build_run_pages", "run_pages"),
           ("site", "_commit", "commit"))


def _time_phases() -> dict[str, float]:
    """Wrap the build's steps (:data:`_PHASES`) to sum their wall time into the returned dict
    (seconds, filled in as builds run)."""
    import functools

    from occbench.leaderboard import site as site_mod
    from occbench.leaderboard import table as table_mod

    spent: dict[str, float] = {}
    for owner, name, label in _PHASES:
        obj: Any = {"site": site_mod, "table": table_mod}.get(owner) or getattr(site_mod, owner)
        f = getattr(obj, name)

        def timed(*a: Any, _f: Any = f, _n: str = label, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_n] = spent.get(_n, 0.0) + time.perf_counter() - t

        setattr(obj, name, functools.wraps(f)(timed))
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=None, help="where to write the store")
    ap.add_argument("--keep", action="store_true", help="keep the store and sites")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--methods", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--images", type=int, default=500, help="test items per image run")
    ap.add_argument("--frames", type=int, default=3000, help="frames per video")
    ap.add_argument("--jobs", type=int, default=0, help="build processes (0 = all cores)")
    ap.add_argument("--entries", type=int, default=1000, help="entries for the pairwise test")
    ap.add_argument("--shared-labels", action="store_true",
                    help="every run of a test set shares its labels, as in a real store (by "
                         "default each run has labels of its own: the worst case for reading)")
    ap.add_argument("--phases", action="store_true",
                    help="also report the seconds of each step of the first build and of "
                         "the rebuild after one new run")
    ap.add_argument("--no-fresh", action="store_true",
                    help="skip the second build from scratch (and the byte-identity check): "
                         "for very large stores")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="occbench-bench-site-"))
    store_dir = args.runs_dir or work / "store"
    methods = [SynthMethod(f"m{i:02d}", 2.0 - 1.6 * i / max(1, args.methods - 1))
               for i in range(args.methods)]
    t0 = time.perf_counter()
    if not (store_dir / "runs").exists():
        make_store(store_dir, methods, image_datasets=("img-a", "img-b"),
                   video_datasets=("vid-a", "vid-b"), seeds=range(args.seeds),
                   classes=args.classes, n_images=args.images, n_videos=8, frames=args.frames,
                   shared_labels=args.shared_labels)
    t_store = time.perf_counter() - t0
    t_read = _read_all(store_dir)
    opts = SiteOptions(n_boot=args.bootstrap, jobs=args.jobs)
    site = work / "site"
    spent = _time_phases() if args.phases else {}
    t = time.perf_counter()
    first = build(RunStore(store_dir), site, options=opts)
    t_build = time.perf_counter() - t
    phases = {k: round(v, 1) for k, v in spent.items()}
    t = time.perf_counter()
    same = build(RunStore(store_dir), site, options=opts)
    t_same = time.perf_counter() - t
    st = RunStore(store_dir)
    derive_run(st, st.job_ids()[0], {"seed": 10_000})
    spent.clear()
    t = time.perf_counter()
    one = build(RunStore(store_dir), site, options=opts)
    t_one = time.perf_counter() - t
    one_phases = {k: round(v, 2) for k, v in spent.items()}
    fresh = work / "fresh"
    if not args.no_fresh:
        build(RunStore(store_dir), fresh, options=opts)
    runs = sorted((site / "runs").glob("*.html"))
    report = {
        "runs": len(runs), "pages": len(one.pages), "store_write_s": round(t_store, 1),
        "store_mb": round(_size(store_dir) / 2**20, 1),
        "read_all_s": round(t_read, 2),
        "build_s": round(t_build, 1), "build_over_read_all": round(t_build / t_read, 1),
        "run_pages_built_first": first.runs_built,
        **({"first_build_phases_s": phases} if args.phases else {}),
        "rebuild_unchanged_s": round(t_same, 1),
        "rebuild_unchanged_over_read_all": round(t_same / t_read, 2),
        "rebuild_unchanged_kept": same.runs_kept,
        "rebuild_after_one_run_s": round(t_one, 1),
        "rebuild_after_one_run_over_read_all": round(t_one / t_read, 2),
        "rebuild_after_one_run_built_kept": [one.runs_built, one.runs_kept],
        **({"rebuild_after_one_run_phases_s": one_phases} if args.phases else {}),
        "peak_rss_mb": {
            "builder": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                    / 1024)},
        "site_mb": round(_size(site) / 2**20, 1),
        "largest_dataset_page_kb": round(max(p.stat().st_size for p in
                                             (site / "datasets").glob("*.html")) / 1024, 1),
        "byte_identical_rebuild": None if args.no_fresh else _tree(site) == _tree(fresh),
        "pairwise": _pairwise(args.entries),
    }
    print(json.dumps(report, indent=1))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

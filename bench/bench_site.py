"""Benchmark: build the leaderboard site for a synthetic store of 1,000 runs.

    python bench/bench_site.py [--runs-dir /tmp/occbench-bench-store] [--keep]

Writes a synthetic store (5 methods × 10 seeds × (2 image datasets × 9 classes + 2 video datasets
of 8 videos × 3,000 frames) = 1,000 runs) with RunStore.write_run, builds the site twice (the
second build checks byte-identical output) and prints sizes and build times as JSON.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import tempfile
import time
from pathlib import Path

from occbench.leaderboard.site import SiteOptions, build_site
from occbench.leaderboard.synthetic import SynthMethod, make_store


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _same_tree(a: Path, b: Path) -> bool:
    for f in sorted(a.rglob("*")):
        if f.is_file() and not filecmp.cmp(f, b / f.relative_to(a), shallow=False):
            return False
    return len(list(a.rglob("*"))) == len(list(b.rglob("*")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=None, help="where to write the store")
    ap.add_argument("--keep", action="store_true", help="keep the store and sites")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="occbench-bench-site-"))
    store_dir = args.runs_dir or work / "store"
    methods = [SynthMethod(n, d) for n, d in
               (("alpha", 2.0), ("beta", 1.6), ("gamma", 1.2), ("delta", 0.8), ("eps", 0.4))]
    t0 = time.perf_counter()
    if not (store_dir / "runs").exists():
        make_store(store_dir, methods, image_datasets=("img-a", "img-b"),
                   video_datasets=("vid-a", "vid-b"), seeds=range(10), classes=9,
                   n_images=500, n_videos=8, frames=3000)
    t_store = time.perf_counter() - t0
    opts = SiteOptions(n_boot=args.bootstrap)
    times = []
    for name in ("site1", "site2"):
        t = time.perf_counter()
        pages = build_site(store_dir, work / name, options=opts)
        times.append(time.perf_counter() - t)
    site = work / "site1"
    runs = sorted((site / "runs").glob("*.html"))
    run_sizes = [p.stat().st_size for p in runs]
    js = (site / "static" / "plotly.min.js").stat().st_size
    report = {
        "runs": len(runs), "pages": len(pages),
        "store_write_s": round(t_store, 1),
        "build_s": [round(t, 1) for t in times],
        "site_mb": round(_size(site) / 2**20, 1),
        "site_without_plotly_js_mb": round((_size(site) - js) / 2**20, 1),
        "plotly_js_mb": round(js / 2**20, 2),
        "run_page_kb": {"max": round(max(run_sizes) / 1024, 1),
                        "mean": round(sum(run_sizes) / len(run_sizes) / 1024, 1)},
        "index_kb": round((site / "index.html").stat().st_size / 1024, 1),
        "largest_dataset_page_kb": round(max(p.stat().st_size for p in
                                             (site / "datasets").glob("*.html")) / 1024, 1),
        "byte_identical_rebuild": _same_tree(site, work / "site2"),
    }
    print(json.dumps(report, indent=1))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

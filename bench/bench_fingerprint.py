"""Cost of Ped2's content fingerprint, cold (empty digest cache) and warm, against baselines.

``Ped2(root).fingerprint()`` hashes the bytes of every file a Ped2 job reads (16 training and
12 test videos' 4,560 JPEGs and the label file) through the per-file digest cache of
:mod:`occbench.datasets.digest`. Measured beside it, on the same file list, in the same process:

* ``read``: merely reading every file's bytes (``open`` + ``read``), the floor for a cold run;
* ``stat``: one ``os.stat`` per file, the floor for a warm run (the old fingerprint did this).

``cold`` uses a new, empty cache directory every repetition; ``warm`` reuses one. The OS page
cache is warm for every variant (the files were read once before timing starts), so ``cold``
measures hashing, not the disk. Each variant is repeated ``--repeat`` times, interleaved, and the
median reported; ratios are median / median.

Usage::

    python bench/bench_fingerprint.py [--root ../shared/data] [--repeat 5]

Prints one JSON line per variant and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from occbench.datasets.video import Ped2


def _files(root: Path) -> list[Path]:
    ds = Ped2(root)
    srcs = [*ds.train_sources(), *ds.test_sources()]
    return [f for s in srcs for f in s.stat_paths()] + ds._label_files()


def _read_all(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


def _stat_all(files: list[Path]) -> None:
    for f in files:
        os.stat(f)


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("OCCBENCH_DATA", "../shared/data"),
                    help="data root holding ped2/ (default $OCCBENCH_DATA or ../shared/data)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.root)
    files = _files(root)
    nbytes = sum(f.stat().st_size for f in files)
    _read_all(files)  # warm the page cache for every variant alike

    times: dict[str, list[float]] = {"read": [], "stat": [], "cold": [], "warm": []}
    fps = set()
    with tempfile.TemporaryDirectory() as tmp:
        warm_dir = Path(tmp) / "warm"
        os.environ["OCCBENCH_CACHE"] = str(warm_dir)
        fps.add(Ped2(root).fingerprint())  # fill the warm cache once
        for i in range(args.repeat):
            times["read"].append(_timed(lambda: _read_all(files)))
            times["stat"].append(_timed(lambda: _stat_all(files)))
            os.environ["OCCBENCH_CACHE"] = str(Path(tmp) / f"cold{i}")
            times["cold"].append(_timed(lambda: fps.add(Ped2(root).fingerprint())))
            os.environ["OCCBENCH_CACHE"] = str(warm_dir)
            times["warm"].append(_timed(lambda: fps.add(Ped2(root).fingerprint())))
    assert len(fps) == 1, f"fingerprint not stable: {fps}"
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(json.dumps({"variant": k, "median_s": round(med[k], 4),
                          "runs_s": [round(x, 4) for x in v]}))
    print(json.dumps({
        "files": len(files), "bytes": nbytes, "fingerprint": fps.pop(),
        "cold_s": round(med["cold"], 3), "warm_s": round(med["warm"], 3),
        "cold_over_read": round(med["cold"] / med["read"], 2),
        "warm_over_stat": round(med["warm"] / med["stat"], 2),
        "cold_over_warm": round(med["cold"] / med["warm"], 1),
        "repeat": args.repeat, "python": platform.python_version(), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()

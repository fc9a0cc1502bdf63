"""The verified store's costs (issue: results you can trust), as ratios against a baseline run
beside them on the same machine:

* ``occbench store verify`` on N runs (default 10,000 synthetic image runs), with and without
  recomputing every metric, against reading every file of the store once (``cat``-like);
* the per-job cost of checksumming in ``RunStore.write_run`` (sha256 of the run's files and the
  record's self-digest) against the whole write.

    python bench/bench_store.py --runs 10000 --items 200 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from occbench.harness.run.spec import Job
from occbench.harness.store.runstore import RECORD_SCHEMA, RunStore, file_sha256, self_digest


def _job(i: int) -> Job:
    return Job(method="bench", method_params={"i": i}, method_version="1", dataset="synth",
               dataset_params={}, dataset_version="1", dataset_fingerprint="synthetic",
               normal_class="0", protocol="image@2", seed=0, modality="image")


def build(path: Path, n: int, items: int) -> tuple[RunStore, float, float]:
    st = RunStore(path).init()
    rng = np.random.default_rng(0)
    y = (rng.random(items) < 0.5).astype(np.int8)
    labels = {"": y}
    t_write = t_hash = 0.0
    for i in range(n):
        job = _job(i)
        raw = {"": rng.standard_normal(items) + y}
        rec = {"schema": RECORD_SCHEMA, "job_id": job.job_id, "status": "ok",
               "job": job.to_dict(), "provenance": {"wall_time_s": 1.0}}
        t0 = time.perf_counter()
        st.write_run(rec, raw, labels, "log\n")
        t_write += time.perf_counter() - t0
        d = st.runs_dir / job.job_id
        t0 = time.perf_counter()  # what checksumming costs: the same hashes again
        for f in ("raw.parquet", "log.txt"):
            file_sha256(d / f)
        self_digest(json.loads((d / "record.json").read_text()))
        t_hash += time.perf_counter() - t0
        st.write_metrics(job.job_id, None, raw, labels)
    return st, t_write / n, t_hash / n


def read_all(path: Path) -> float:
    t0 = time.perf_counter()
    for p in path.rglob("*"):
        if p.is_file():
            p.read_bytes()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        st, per_write, per_hash = build(Path(tmp) / "s", a.runs, a.items)
        t_build = time.perf_counter() - t0
        base = read_all(st.path)
        t0 = time.perf_counter()
        bad = RunStore(st.path).verify(recompute=False)
        t_verify = time.perf_counter() - t0
        t0 = time.perf_counter()
        bad += RunStore(st.path).verify(recompute=True)
        t_recompute = time.perf_counter() - t0
    out = {"runs": a.runs, "items_per_run": a.items, "build_s": round(t_build, 1),
           "read_every_file_once_s": round(base, 2), "verify_s": round(t_verify, 2),
           "verify_recompute_s": round(t_recompute, 2),
           "verify_ratio": round(t_verify / base, 2),
           "verify_recompute_ratio": round(t_recompute / base, 2),
           "write_run_ms": round(1000 * per_write, 2), "checksum_ms": round(1000 * per_hash, 2),
           "checksum_share_of_write": round(per_hash / per_write, 3), "bad": len(bad)}
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

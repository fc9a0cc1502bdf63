"""A small GPU grid on the Ray runner: fractional packing, GPU utilisation and jobs per minute.

The grid is one torch image method (default ``dcae``, which declares ``gpus=0.25``) on MNIST-
format data, one job per normal class and seed. The data are *synthetic* images in the official
MNIST layout and size (``occbench.datasets.fakes.write_mnist``: 28x28, class-dependent
brightness plus noise, ``--n-train`` training images per class), so the figure measures the
scheduler and the GPU, not detection quality. The grid runs twice into fresh stores:

* ``packed``: Ray places jobs by the method's declared resources (0.25 GPU each: 4 per GPU);
* ``one_at_a_time``: the same jobs with ``--max-concurrent 1`` (no packing).

While each runs, ``nvidia-smi`` is sampled every 0.5 s (utilisation %, memory MiB). Run on a
GPU machine from the repository root::

    python bench/bench_gpu_grid.py --json gpu.json             # 8 jobs: classes 0-7, seed 0
    python bench/bench_gpu_grid.py --classes 8 --seeds 2 --epochs 10

``--spec`` times a real spec's grid instead (its methods and datasets, the first ``--seeds``
seeds; ``--only`` keeps some of its methods by label or name), e.g. issue 6's Fashion-MNIST
benchmark, packed vs one at a time, with the IDX files under ``--data-root``::

    python bench/bench_gpu_grid.py --spec benchmarks/fashion-mnist.toml \
        --only adacl,dcae,deep-svdd,deep-svdd-soft,oclr --seeds 1 --data-root /tmp/data

Without a GPU it still runs (on CPU) so the script itself can be checked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from occbench.datasets.fakes import write_mnist
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.ray_runner import RayRunner, init_local_ray
from occbench.harness.run.spec import Job, expand, load_spec, spec_from_dict
from occbench.harness.store.runstore import RunStore


class GpuSampler:
    """``nvidia-smi`` every ``interval_ms``: (time, utilisation %, memory used MiB) samples."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", f"-lms={self.interval_ms}"],
            stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                u, m = (float(x) for x in line.strip().split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), u, m))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"gpu_samples": 0}
        util = [s[1] for s in self.samples]
        return {"gpu_samples": len(util), "gpu_util_mean_pct": round(statistics.fmean(util), 1),
                "gpu_util_median_pct": statistics.median(util),
                "gpu_busy_share": round(sum(u > 0 for u in util) / len(util), 3),
                "gpu_mem_max_mib": max(s[2] for s in self.samples)}


def grid(method: str, epochs: int, n_classes: int, seeds: int, root: Path) -> list[Job]:
    spec = spec_from_dict({
        "name": "gpu-grid", "seeds": list(range(seeds)),
        "methods": [{"name": method, "params": {"epochs": epochs}}],
        "datasets": [{"name": "mnist", "classes": [str(c) for c in range(n_classes)]}],
    })
    return expand(spec, str(root)).jobs


def spec_grid(path: str, only: str, seeds: int, data_root: str | None) -> list[Job]:
    """The jobs of spec ``path``: its first ``seeds`` seeds, methods whose label or name is in
    the comma-separated ``only`` (all if empty)."""
    spec = load_spec(path)
    keep = {x.strip() for x in only.split(",") if x.strip()}
    if keep:
        spec.methods = [m for m in spec.methods if m.get("label", m["name"]) in keep
                        or m["name"] in keep]
    spec.seeds = spec.seeds[:seeds]
    return expand(spec, data_root).jobs


def peak_overlap(provs: list[dict[str, Any]]) -> int:
    """Most jobs running at one instant, from each task's start/end time on its worker."""
    ev = sorted([(float(p["ray_task_start"]), 1) for p in provs if "ray_task_start" in p]
                + [(float(p["ray_task_end"]), -1) for p in provs if "ray_task_end" in p],
                key=lambda e: (e[0], e[1]))
    run = peak = 0
    for _, d in ev:
        run += d
        peak = max(peak, run)
    return peak


def timed(jobs: list[Job], runner: RayRunner, root: Path | str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="occbench-gpu-") as d:
        store = RunStore(Path(d) / "store")
        with GpuSampler() as smi:
            t0 = time.perf_counter()
            s = run_jobs(jobs, store, runner, None if root is None else str(root))
            wall = time.perf_counter() - t0
        provs = [store.record(j)["provenance"] for j in store.job_ids()]
    out: dict[str, Any] = {
        "jobs": len(jobs), "ok": s.ok, "failed": s.failed, "wall_s": round(wall, 1),
        "jobs_per_min": round(60 * s.ok / wall, 2),
        "job_wall_mean_s": round(statistics.fmean(float(p["wall_time_s"]) for p in provs), 2)
        if provs else None,
        "devices": sorted({str(p.get("device")) for p in provs}),
        "gpus_declared": sorted({(p.get("resources") or {}).get("gpus") for p in provs}),
        "peak_gpu_mb_max": max((float(p.get("peak_gpu_mb") or 0) for p in provs), default=0),
        "max_jobs_at_once": peak_overlap(provs),
        "cuda_visible_devices": sorted({str(p.get("cuda_visible_devices")) for p in provs}),
        **smi.summary(),
    }
    if s.failures:
        out["first_failure"] = s.failures[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="dcae")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--n-train", type=int, default=6000, help="training images per class")
    ap.add_argument("--n-test", type=int, default=1000, help="test images per class")
    ap.add_argument("--spec", default=None, help="time this spec's grid instead")
    ap.add_argument("--only", default="", help="with --spec: methods to keep (labels/names)")
    ap.add_argument("--data-root", default=None, help="with --spec: the data root")
    ap.add_argument("--skip-unpacked", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="occbench-gpu-data-"))
    n_train = 500 if args.spec else args.n_train  # with --spec the fake data is the warm-up's
    write_mnist(root / "mnist", n_train_per_class=n_train, n_test_per_class=args.n_test)
    out: dict[str, Any]
    if args.spec:
        jobs = spec_grid(args.spec, args.only, args.seeds, args.data_root)
        out = {"spec": args.spec, "only": args.only, "seeds": args.seeds, "jobs": len(jobs),
               "methods": sorted({j.label or j.method for j in jobs})}
    else:
        jobs = grid(args.method, args.epochs, args.classes, args.seeds, root)
        out = {"method": args.method, "epochs": args.epochs, "jobs": len(jobs),
               "n_train_per_class": args.n_train}
    data_root = args.data_root if args.spec else root
    t0 = time.perf_counter()
    init_local_ray()
    out["ray_startup_s"] = round(time.perf_counter() - t0, 1)
    import ray

    out["cluster"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}

    def save() -> None:
        print(json.dumps(out, indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")

    # warm-up (not measured): start the packed run's workers and their CUDA contexts
    warm = grid(args.method, 1, min(4, args.classes), 1, root)
    warm = [Job.from_dict({**j.to_dict(), "seed": 10_000 + i}) for i, j in enumerate(warm)]
    out["warmup"] = timed(warm, RayRunner(), root)
    out["packed"] = timed(jobs, RayRunner(), data_root)
    save()
    if not args.skip_unpacked:
        # the same grid again (fresh store), one job at a time; workers are warm by now
        out["one_at_a_time"] = timed(jobs, RayRunner(max_concurrent=1), data_root)
        save()
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Training throughput of the ``ae3d`` 3D autoencoder: clips/s, one model vs several stacked.

Runs the methods' own training code (``Ae3dMethod.fit`` for one model, ``Ae3dMethod.fit_stacked``
for G models trained as one ``vmap`` computation) on random uint8 frames held on the device, for
each speed configuration, number of stacked models and batch size. The rate is the method's
``train_stats_["steady_clips_per_s_all"]``: clips of all stacked models per second, after the
first ``TIMING_WARMUP_STEPS`` steps (compilation, cuDNN autotuning). One JSON line per
measurement, then a table.

    python bench/bench_ae3d.py                        # GPU default: <= ~2 min (--budget-s)
    python bench/bench_ae3d.py --models 1 2 4 --configs bf16-cl bf16-cl-compile --json b.jsonl
    python bench/bench_ae3d.py --device cpu --size 32 --width 0.125 --steps 10 \\
        --configs fp32 --models 1 3                    # CPU smoke test of the same code

``--mix`` stacks different variants (ae3d, lntra-skip, lcon-inside, lntra-patch in turn) instead
of seeds of ae3d. One clip = 16 x 256 x 256 grey frames, about 193 GFLOP per training clip
(forward + backward) at width 1; TFLOP/s in the table is clips/s x that figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from occbench.harness.api import Context, Video, VideoData
from occbench.methods.video_ae import (
    TIMING_WARMUP_STEPS,
    Ae3dMethod,
    LconInside,
    LntraPatch,
    LntraSkip,
    train_flops_per_clip,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False},
    "bf16-cl": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16-cl-compile": {"precision": "bf16", "channels_last": True, "compile": True},
}
MIX = (Ae3dMethod, LntraSkip, LconInside, LntraPatch)


def random_videos(n_frames: int, size: int, seed: int = 0) -> VideoData:
    """Two videos of random uint8 grey frames ``(n_frames // 2, size, size, 1)`` each."""
    rng = np.random.default_rng(seed)
    half = n_frames // 2
    return VideoData(tuple(
        Video(f"v{i}", rng.integers(0, 256, (half, size, size, 1), dtype=np.uint8))
        for i in range(2)))


def bench_one(cfg: dict[str, Any], models: int, batch: int, steps: int, size: int,
              clip_len: int, width: float, device: torch.device, videos: VideoData,
              mix: bool) -> dict[str, Any]:
    """Train ``models`` models for ``TIMING_WARMUP_STEPS + steps`` steps; their rate after the
    warm-up steps."""
    classes = [MIX[i % len(MIX)] if mix else Ae3dMethod for i in range(models)]
    params = {"epochs": 10_000, "batch_size": batch, "size": size, "clip_len": clip_len,
              "width": width, "max_steps": TIMING_WARMUP_STEPS + steps, "device": str(device),
              **cfg}
    members = [cls(**params) for cls in classes]
    ctxs = [Context(seed=i, device=str(device)) for i in range(models)]
    t0 = time.perf_counter()
    if models == 1:
        members[0].fit(videos, ctxs[0])
    else:
        Ae3dMethod.fit_stacked(members, videos, ctxs)
    wall = time.perf_counter() - t0
    st = members[0].train_stats_
    total = st["steady_clips_per_s_all"]
    return {"models": models, "variants": [c.name for c in classes], "batch": batch,
            "steps": steps, "clips_per_s": total,
            "clips_per_s_per_model": None if total is None else round(total / models, 1),
            "wall_s": round(wall, 1), "peak_gpu_mb": st["peak_gpu_mb"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", nargs="+", default=["bf16-cl", "bf16-cl-compile"],
                    choices=sorted(CONFIGS))
    ap.add_argument("--models", nargs="+", type=int, default=[1, 3],
                    help="numbers of models trained as one stacked computation (1 = alone)")
    ap.add_argument("--batch", nargs="+", type=int, default=[4], help="clips per model")
    ap.add_argument("--steps", type=int, default=40, help="timed steps after the warm-up")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--frames", type=int, default=600, help="random frames held on the device")
    ap.add_argument("--mix", action="store_true", help="stack different variants, not seeds")
    ap.add_argument("--budget-s", type=float, default=110.0,
                    help="start no further measurement after this many seconds")
    ap.add_argument("--json", default=None, help="append JSON lines here too")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    env = {"torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    flops = train_flops_per_clip(a.width, a.clip_len, a.size)
    videos = random_videos(a.frames, a.size)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped = []
    for name in a.configs:
        for b in a.batch:
            for g in a.models:
                if time.perf_counter() - t_start > a.budget_s:
                    skipped.append(f"{name} x{g} batch {b}")
                    continue
                r = {"config": name, **bench_one(CONFIGS[name], g, b, a.steps, a.size,
                                                 a.clip_len, a.width, dev, videos, a.mix),
                     **env}
                r["tflops"] = (None if r["clips_per_s"] is None
                               else round(r["clips_per_s"] * flops / 1e12, 2))
                rows.append(r)
                line = json.dumps(r)
                print(line, flush=True)
                if a.json:
                    with open(a.json, "a") as fh:
                        fh.write(line + "\n")
    print(f"\n{flops / 1e9:.1f} GFLOP per training clip; {a.steps} timed steps after "
          f"{TIMING_WARMUP_STEPS} warm-up steps; {env['gpu']}, torch {env['torch']}")
    print(f"{'config':<18}{'models':>7}{'batch':>6}{'clips/s':>10}{'per model':>10}"
          f"{'TFLOP/s':>9}{'wall s':>8}{'peak MiB':>10}")
    for r in rows:
        mem = "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
        print(f"{r['config']:<18}{r['models']:>7}{r['batch']:>6}{r['clips_per_s']!s:>10}"
              f"{r['clips_per_s_per_model']!s:>10}{r['tflops']!s:>9}{r['wall_s']:>8}{mem:>10}")
    if skipped:
        print(f"not measured (past --budget-s {a.budget_s:g}): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

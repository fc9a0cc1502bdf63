"""Training throughput of the ``ae3d`` 3D autoencoder: clips/s per precision/layout/compile setting.

Runs the exact training step of :class:`occbench.methods.video_ae.Ae3dMethod` (uint8 frames held
on the device, clips gathered by indexing, MSE over all frames, fused Adam) on random frames, for
each configuration and batch size, and prints one JSON line per measurement plus a table.

    python bench/bench_ae3d.py                       # GPU: fp32 vs bf16+channels-last+compile
    python bench/bench_ae3d.py --batch 4 32 --steps 60 --json out.jsonl
    python bench/bench_ae3d.py --device cpu --size 64 --width 0.25 --steps 3   # smoke test

One clip = 16 x 256 x 256 grey frames; the step costs about 192 GFLOP per clip (fwd + bwd).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from occbench.methods import _torch as T
from occbench.methods.video_ae import AE3D, FrameBank, train_flops_per_clip

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False},
    "bf16-cl": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16-cl-compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


def bench_one(cfg: dict[str, Any], batch: int, steps: int, warmup: int, size: int,
              clip_len: int, width: float, device: torch.device, n_frames: int = 600
              ) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` (compilation included in warm-up)."""
    torch.manual_seed(0)
    fmt = T.memory_format(device, cfg["channels_last"], 5)
    frames = torch.randint(0, 256, (n_frames, size, size), dtype=torch.uint8, device=device)
    bank = FrameBank(frames, [("v", n_frames)], np.array([0]), np.array([n_frames]))
    model = AE3D(width).to(device)
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4,
                           fused=True if device.type == "cuda" else None)
    step_model = T.maybe_compile(model, cfg["compile"], device)
    rng = np.random.default_rng(0)
    total = warmup + steps
    starts = rng.integers(0, n_frames - clip_len, size=(total, batch))
    idx = torch.from_numpy(starts[..., None] + np.arange(clip_len)).to(device)

    def step(i: int) -> None:
        x = bank.gather(idx[i], fmt)
        with T.autocast(device, cfg["precision"]):
            recon, _ = step_model(x)
            loss = F.mse_loss(recon.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    T.synchronize(device)
    warm_s = time.perf_counter() - t0
    T.reset_peak_memory(device)
    t0 = time.perf_counter()
    for i in range(warmup, total):
        step(i)
    T.synchronize(device)
    dt = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "seconds": round(dt, 3),
            "clips_per_s": round(steps * batch / dt, 1), "warmup_s": round(warm_s, 1),
            "peak_gpu_mb": T.peak_memory_mb(device)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", nargs="+", default=["fp32", "bf16-cl-compile"],
                    choices=sorted(CONFIGS))
    ap.add_argument("--batch", nargs="+", type=int, default=[4, 32])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--json", default=None, help="append JSON lines here too")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    env = {"torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    flops = train_flops_per_clip(a.width, a.clip_len, a.size)
    rows = []
    for name in a.configs:
        for b in a.batch:
            # a fixed number of clips per config keeps small batches from timing too few clips
            steps = max(a.steps, a.steps * 32 // b // 2) if dev.type == "cuda" else a.steps
            r = {"config": name, **bench_one(CONFIGS[name], b, steps, a.warmup, a.size,
                                             a.clip_len, a.width, dev), **env}
            r["tflops"] = round(r["clips_per_s"] * flops / 1e12, 1)
            rows.append(r)
            line = json.dumps(r)
            print(line, flush=True)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(line + "\n")
    print(f"\n{flops / 1e9:.1f} GFLOP per training clip")
    print(f"{'config':<18}{'batch':>6}{'clips/s':>10}{'TFLOP/s':>9}{'peak MiB':>10}")
    for r in rows:
        mem = "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
        print(f"{r['config']:<18}{r['batch']:>6}{r['clips_per_s']:>10}{r['tflops']:>9}{mem:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

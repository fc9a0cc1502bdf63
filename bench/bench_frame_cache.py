"""Clips per second: frame cache (memmap) vs decoding JPEGs per clip with a DataLoader.

The baseline loads clips the way the MNAD / LNTRA code does: a ``torch.utils.data.Dataset``
whose ``__getitem__`` reads each of the ``T`` frames with ``cv2.imread``, resizes it to 256x256
and scales it to [-1, 1] float32, batched by a ``DataLoader``. The cache path draws the same
clips from the decoded uint8 memmaps of :mod:`occbench.datasets.cache` through a ``DataLoader``
over :class:`~occbench.datasets.cache.ClipIndex`, and (for a like-for-like comparison) also
converts each batch to float32 in [-1, 1] on the CPU.

Usage::

    python bench/bench_frame_cache.py --data-root ../shared/data [--clips 256] [--workers 0]

Prints one JSON line per measurement and a summary; numbers are for the training videos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from occbench.datasets.cache import ClipIndex
from occbench.datasets.formats import list_images
from occbench.datasets.video import Ped2
from torch.utils.data import DataLoader


class JpegClips(torch.utils.data.Dataset):
    """Paper-style loader: ``cv2.imread`` + resize + normalise for every frame of every clip."""

    def __init__(self, videos: list[list[Path]], clip_len: int, size: int) -> None:
        self.size = size
        self.clip_len = clip_len
        self.videos = videos
        self.index = [(v, s) for v, files in enumerate(videos)
                      for s in range(len(files) - clip_len + 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        v, s = self.index[i]
        frames = []
        for f in self.videos[v][s: s + self.clip_len]:
            img = cv2.imread(str(f))
            if img is None:
                raise FileNotFoundError(f"cannot read {f}")
            img = cv2.resize(img, (self.size, self.size)).astype(np.float32)
            frames.append(img / 127.5 - 1.0)
        return np.stack(frames)


def _time_loader(loader: DataLoader, n_clips: int, to_float: bool = False) -> dict[str, float]:
    seen = 0
    t0 = time.perf_counter()
    while seen < n_clips:
        for batch in loader:
            if to_float:  # the baseline's scaling to [-1, 1], done here on the CPU
                x = batch.numpy().astype(np.float32)
                x *= 1 / 127.5
                x -= 1.0
                batch = torch.from_numpy(x)
            seen += int(batch.shape[0])
            if seen >= n_clips:
                break
    dt = time.perf_counter() - t0
    return {"clips": seen, "seconds": round(dt, 3), "clips_per_s": round(seen / dt, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="folder with ped2/ (frames layout)")
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--clips", type=int, default=256, help="clips timed for the JPEG baseline")
    ap.add_argument("--cache-clips", type=int, default=4096, help="clips timed for the cache")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (both paths)")
    ap.add_argument("--cache-dir", default=None, help="frame cache (default $OCCBENCH_CACHE)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    ds = Ped2(args.data_root, size=[args.size, args.size], channels=3,
              **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    sources = ds.train_sources()
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "clip_len": args.clip_len, "size": args.size, "batch_size": args.batch_size,
        "workers": args.workers, "train_videos": len(sources),
        "train_frames": sum(len(s.files) for s in sources),
    }

    t0 = time.perf_counter()
    videos = [v.frames for v in ds.load_videos(sources).videos]
    results["cache_open_or_build_s"] = round(time.perf_counter() - t0, 2)
    for v in videos:  # read once so both paths run with a warm page cache
        np.asarray(v).sum()

    jpeg = JpegClips([list_images(s.path) for s in sources], args.clip_len, args.size)
    g = torch.Generator().manual_seed(0)
    base = _time_loader(DataLoader(jpeg, batch_size=args.batch_size, shuffle=True,
                                   num_workers=args.workers, generator=g), args.clips)
    results["jpeg_dataloader"] = base
    print(json.dumps({"jpeg_dataloader": base}), flush=True)

    clips = ClipIndex(videos, args.clip_len)
    for name, to_float in (("cache_uint8", False), ("cache_float", True)):
        g = torch.Generator().manual_seed(0)
        r = _time_loader(DataLoader(clips, batch_size=args.batch_size, shuffle=True,
                                    num_workers=args.workers, generator=g,
                                    collate_fn=ClipIndex.collate),
                         args.cache_clips, to_float)
        results[name] = r
        results[f"speedup_{name}"] = round(r["clips_per_s"] / base["clips_per_s"], 1)
        print(json.dumps({name: r}), flush=True)

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n = 0
    while n < args.cache_clips:
        n += len(clips.sample(args.batch_size, rng))
    dt = time.perf_counter() - t0
    results["cache_numpy_sample"] = {"clips": n, "seconds": round(dt, 3),
                                     "clips_per_s": round(n / dt, 1)}
    results["speedup_cache_numpy_sample"] = round(n / dt / base["clips_per_s"], 1)
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

"""Synthetic run stores for tests and the site benchmark (no method is run).

Each synthetic method has a known separation ``d``: normal items score ~ N(0, 1) and anomalous
ones ~ N(d, 1), so its true AUC is Φ(d / √2). Runs are written with :meth:`RunStore.write_run`
in the real record format, metrics computed by the real protocol, so the leaderboard reads them
exactly as it reads real runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from occbench.harness.protocols import get_protocol
from occbench.harness.store import RECORD_SCHEMA, RunStore, scores_frame


@dataclass(frozen=True)
class SynthMethod:
    name: str
    d: float  # separation of anomalous from normal scores (in normal-score std units)
    seed_noise: float = 0.1  # how much d moves from seed to seed
    description: str = ""


DEFAULT_METHODS = (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.5),
                   SynthMethod("gamma", 1.0), SynthMethod("delta", 0.5, 0.0))


def _job_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _record(method: SynthMethod, dataset: str, modality: str, normal_class: str | None,
            seed: int, protocol: str, metrics: dict[str, Any], job_id: str, gpus: float,
            extra_params: dict[str, Any]) -> dict[str, Any]:
    proto = get_protocol(protocol)
    return {
        "schema": RECORD_SCHEMA, "job_id": job_id, "status": "ok", "error": None,
        "job": {"job_id": job_id, "method": method.name, "label": "", "method_version": "1",
                "method_params": {"d": method.d, **extra_params}, "dataset": dataset,
                "dataset_params": {}, "dataset_version": "1", "dataset_fingerprint": "synthetic",
                "normal_class": normal_class, "modality": modality, "protocol": protocol,
                "seed": seed, "selected_on_test": False, "fast": True, "tags": {},
                "time_limit_s": None, "resources": {"cpus": 1, "gpus": gpus}},
        "metrics": metrics, "protocol": proto.describe(),
        "provenance": {"wall_time_s": round(1.0 + method.d + 0.1 * seed, 3),
                       "peak_rss_mb": 300.0 + 10 * seed, "n_parameters": int(1000 * (1 + method.d)),
                       "device": "cuda" if gpus else "cpu", "git_sha": "synthetic",
                       "peak_gpu_mb": 500.0 if gpus else None},
    }


def make_store(path: str | Path, methods: Sequence[SynthMethod] = DEFAULT_METHODS,
               image_datasets: Sequence[str] = ("synth-img",),
               video_datasets: Sequence[str] = ("synth-vid",), seeds: Sequence[int] = (0, 1, 2),
               classes: int = 3, n_images: int = 200, n_videos: int = 4, frames: int = 300,
               gpus: float = 0.0, border: int = 0) -> RunStore:
    """Write a synthetic store; returns it. Sizes: images per class job, videos × frames.

    ``border`` > 0 makes the first/last ``border`` frames of each video unscorable (NaN raw score,
    as a clip-based method), which the protocol then drops.
    """
    st = RunStore(path).init()
    for m in methods:
        for s in seeds:
            rng = np.random.default_rng([s, int(m.d * 1000), len(m.name)])
            d = m.d + m.seed_noise * rng.standard_normal()
            for ds in image_datasets:
                for c in range(classes):
                    y = (rng.random(n_images) < 0.5).astype(np.int8)
                    img_raw = {"": rng.standard_normal(n_images) + d * y}
                    img_labels = {"": y}
                    p = get_protocol("image@1")
                    metrics = p.evaluate(img_raw, img_labels)
                    ev, _ = p.process(img_raw, img_labels)
                    jid = _job_id(m.name, ds, c, s)
                    st.write_run(_record(m, ds, "image", str(c), s, "image@1", metrics, jid,
                                         gpus, {}), scores_frame(img_raw, ev, img_labels))
            for ds in video_datasets:
                labels: dict[str, np.ndarray] = {}
                raw: dict[str, np.ndarray] = {}
                for v in range(n_videos):
                    y = np.zeros(frames, np.int8)
                    a = int(rng.integers(frames // 5, frames // 2))
                    y[a:a + frames // 4] = 1
                    # temporally smooth scores: a slowly varying random walk plus the signal
                    noise = np.convolve(rng.standard_normal(frames + 9), np.ones(10) / 10,
                                        mode="valid") * 3
                    r = noise + d * y
                    if border:
                        r[:border] = np.nan
                        r[-border:] = np.nan
                    labels[f"video_{v:02d}"], raw[f"video_{v:02d}"] = y, r
                p = get_protocol("video-minmax@1")
                metrics = p.evaluate(raw, labels)
                ev, _ = p.process(raw, labels)
                jid = _job_id(m.name, ds, s)
                st.write_run(_record(m, ds, "video", None, s, "video-minmax@1", metrics, jid,
                                     gpus, {}), scores_frame(raw, ev, labels))
    return st

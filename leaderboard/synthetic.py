"""Synthetic run stores for tests and the site benchmark (no method is run).

Each synthetic method has a known separation ``d``: normal items score ~ N(0, 1) and anomalous
ones ~ N(d, 1), so its true AUC is Φ(d / √2). Runs are written with :meth:`RunStore.write_run`
in the real record format, metrics computed by the real protocol, so the leaderboard reads them
exactly as it reads real runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from occbench.harness.run.spec import Job
from occbench.harness.store.runstore import RECORD_SCHEMA, RunStore


@dataclass(frozen=True)
class SynthMethod:
    name: str
    d: float  # separation of anomalous from normal scores (in normal-score std units)
    seed_noise: float = 0.1  # how much d moves from seed to seed
    description: str = ""


DEFAULT_METHODS = (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.5),
                   SynthMethod("gamma", 1.0), SynthMethod("delta", 0.5, 0.0))


def _job(method: SynthMethod, dataset: str, modality: str, normal_class: str | None,
         seed: int, protocol: str) -> Job:
    return Job(method=method.name, method_params={"d": method.d}, method_version="1",
               dataset=dataset, dataset_params={}, dataset_version="1",
               dataset_fingerprint="synthetic", normal_class=normal_class, protocol=protocol,
               seed=seed, modality=modality, fast=True)


def _record(job: Job, method: SynthMethod, gpus: float) -> dict[str, Any]:
    return {
        "schema": RECORD_SCHEMA, "job_id": job.job_id, "status": "ok", "job": job.to_dict(),
        "provenance": {"resources": {"cpus": 1, "gpus": gpus},
                       "wall_time_s": round(1.0 + method.d + 0.1 * job.seed, 3),
                       "peak_rss_mb": 300.0 + 10 * job.seed,
                       "n_parameters": int(1000 * (1 + method.d)),
                       "device": "cuda" if gpus else "cpu", "git_sha": "synthetic",
                       "peak_gpu_mb": 500.0 if gpus else None,
                       "started_at": "2026-01-01T00:00:00Z"},
    }


def make_store(path: str | Path, methods: Sequence[SynthMethod] = DEFAULT_METHODS,
               image_datasets: Sequence[str] = ("synth-img",),
               video_datasets: Sequence[str] = ("synth-vid",), seeds: Sequence[int] = (0, 1, 2),
               classes: int = 3, n_images: int = 200, n_videos: int = 4, frames: int = 300,
               gpus: float = 0.0, border: int = 0, shared_labels: bool = False) -> RunStore:
    """Write a synthetic store; returns it. Sizes: images per class job, videos × frames.

    ``border`` > 0 makes the first/last ``border`` frames of each video unscorable (NaN raw score,
    as a clip-based method), which the protocol then drops. ``shared_labels``: every run of a
    test set (dataset and class) has the same labels, as in a real store; by default each run
    draws labels of its own (a labels file per run: the worst case for a board's reads).
    """
    st = RunStore(path).init()
    for m in methods:
        for s in seeds:
            rng = np.random.default_rng([s, int(m.d * 1000), len(m.name)])
            d = m.d + m.seed_noise * rng.standard_normal()
            for ds in image_datasets:
                for c in range(classes):
                    y = (rng.random(n_images) < 0.5).astype(np.int8)
                    if shared_labels:  # drawn from the test set alone (the run's rng moves on)
                        y = (_test_set_rng(ds, str(c)).random(n_images) < 0.5).astype(np.int8)
                    img_raw = {"": rng.standard_normal(n_images) + d * y}
                    img_labels = {"": y}
                    job = _job(m, ds, "image", str(c), s, "image@2")
                    st.write_run(_record(job, m, gpus), img_raw, img_labels)
                    st.write_metrics(job.job_id, None, img_raw, img_labels)
            for ds in video_datasets:
                labels: dict[str, np.ndarray] = {}
                raw: dict[str, np.ndarray] = {}
                lab_rng = _test_set_rng(ds, "") if shared_labels else rng
                for v in range(n_videos):
                    y = np.zeros(frames, np.int8)
                    a = int(lab_rng.integers(frames // 5, frames // 2))
                    y[a:a + frames // 4] = 1
                    # temporally smooth scores: a slowly varying random walk plus the signal
                    noise = np.convolve(rng.standard_normal(frames + 9), np.ones(10) / 10,
                                        mode="valid") * 3
                    r = noise + d * y
                    if border:
                        r[:border] = np.nan
                        r[-border:] = np.nan
                    labels[f"video_{v:02d}"], raw[f"video_{v:02d}"] = y, r
                job = _job(m, ds, "video", None, s, "video-minmax@2")
                st.write_run(_record(job, m, gpus), raw, labels)
                st.write_metrics(job.job_id, None, raw, labels)
    return st


def _test_set_rng(dataset: str, normal_class: str) -> np.random.Generator:
    """A generator that depends on the test set only (its labels are the same in every run)."""
    return np.random.default_rng(list(hashlib.sha256(f"{dataset}/{normal_class}".encode())
                                      .digest()[:8]))


def derive_run(store: RunStore, job_id: str, job_changes: dict[str, Any] | None = None,
               provenance_changes: dict[str, Any] | None = None,
               set_aside_original: bool = False) -> str:
    """Write a new, verified run like ``job_id``'s with changed job fields (a new id) and
    provenance: what a refresh after a new method version leaves beside the old run. For tests
    and benchmarks; the raw scores are the original's. Returns the new job id."""
    rec = store.run_record(job_id)
    new = Job.from_dict({**rec["job"], **(job_changes or {})})
    out = {**rec, "job_id": new.job_id, "job": new.to_dict(),
           "provenance": {**rec["provenance"], **(provenance_changes or {})}}
    store.write_run(out, store.raw(job_id), store.labels(job_id), store.log(job_id))
    store.write_metrics(new.job_id)
    if set_aside_original and new.job_id != job_id:
        store.set_aside(job_id)
    return new.job_id

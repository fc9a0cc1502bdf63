"""Hyperparameter sweeps: one method on one dataset, selected on normal validation data.

A sweep file (TOML)::

    name = "ocsvm-nu"
    method = "ocsvm"
    dataset = "digits"
    dataset_params = {}            # optional
    classes = ["0", "1"]           # normal class(es) of an image dataset, or "all"
    seeds = [0]
    num_samples = 1                # random search: configs drawn; grid: repeats of the grid
    search_seed = 0                # makes random draws reproducible
    select_on = "validation"       # or "test" (then every record says selected_on_test=true)
    validation_fraction = 0.2      # share of the normal training items held out
    # protocol, fast, time_limit_s, max_concurrent_trials: optional

    [params]                       # fixed parameters of every trial
    kernel = "rbf"

    [search]                       # one entry per searched parameter
    nu = { grid = [0.01, 0.05, 0.1, 0.2] }
    gamma = { loguniform = [1e-4, 1e-1] }   # also: uniform = [a, b], choice = [...]

How a sweep runs
    1. Ray Tune draws the configs (grid and/or random search) and runs one *trial* per config in
       a Ray worker. A trial computes the **validation objective**: for each normal class and
       seed it holds out ``validation_fraction`` of the normal training items, fits the method on
       the rest, and scores the held-out normals together with pseudo anomalies made from them;
       the objective is the ROC AUC of that (higher is better), averaged over classes and seeds.
       Pseudo anomalies are the method's own when it defines ``pseudo_anomalies(images, rng)``
       (uint8 ``(N, H, W, C)`` in, same shape out); otherwise :func:`corrupt_images` below. Test
       labels are never read by a trial.
    2. Each config then runs as ordinary full jobs (fit on all training data, score the test
       split) through the runner into the same store, content-addressed, so a rerun skips them.
       The driver computes their test metrics, as for any job.
    3. The best config is the one with the highest validation objective, or with the highest
       test AUC when ``select_on = "test"``; such a sweep's jobs carry ``selected_on_test=True``
       (part of the job id, so they never mix with honestly selected runs).

Results go to ``STORE/sweeps/<name>.parquet``: one row per trial with ``param_<name>`` columns,
``val_auc``, ``test_auc`` (mean over the config's jobs of the headline AUC: image AUROC, or micro
frame AUC for video), ``job_ids``, ``selected_on``, ``selected_on_test`` and ``best``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from occbench.harness import registry
from occbench.harness.api import Data, ImageData, Method, Video, VideoData
from occbench.harness.run.spec import Job, SpecError, make_dataset, resolve_method
from occbench.harness.store.paths import (
    UnsafePathError,
    check_name,
    inside,
    is_safe_name,
    safe_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SEARCH_KINDS = ("grid", "uniform", "loguniform", "choice")
_KEYS = {"name", "method", "dataset", "dataset_params", "classes", "seeds", "num_samples",
         "search_seed", "select_on", "validation_fraction", "protocol", "fast", "time_limit_s",
         "max_concurrent_trials", "params", "search"}


class SweepError(SpecError):
    """A sweep file that cannot run; the message names the file and the key."""


@dataclass
class SweepSpec:
    name: str
    method: str
    dataset: str
    search: dict[str, tuple[str, list[Any]]]
    params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | str | None = "all"
    seeds: list[int] = field(default_factory=lambda: [0])
    num_samples: int = 1
    search_seed: int = 0
    select_on: str = "validation"
    validation_fraction: float = 0.2
    protocol: str | None = None
    fast: bool = False
    time_limit_s: float | None = None
    max_concurrent_trials: int | None = None
    path: str = "<memory>"

    @property
    def selected_on_test(self) -> bool:
        return self.select_on == "test"


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep TOML file."""
    p = Path(path)
    if not p.exists():
        raise SweepError(f"sweep file {str(path)!r} not found")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{p}: not valid TOML: {exc}") from exc
    return sweep_from_dict(data, str(p))


def sweep_from_dict(data: Mapping[str, Any], path: str = "<memory>") -> SweepSpec:
    """Check a sweep's keys and search ranges (method and parameter names included)."""
    bad = sorted(set(data) - _KEYS)
    if bad:
        raise SweepError(f"{path}: unknown keys {bad} (known: {sorted(_KEYS)})")
    for k in ("method", "dataset"):
        if not isinstance(data.get(k), str):
            raise SweepError(f"{path}: `{k}` (a registered name) is required")
    search_in = data.get("search") or {}
    if not search_in:
        raise SweepError(f"{path}: [search] is empty; give at least one parameter range, e.g. "
                         "nu = { grid = [0.05, 0.1] }")
    search: dict[str, tuple[str, list[Any]]] = {}
    for pname, rng in search_in.items():
        where = f"{path}: [search] {pname}: "
        if not isinstance(rng, Mapping) or len(rng) != 1 or next(iter(rng)) not in SEARCH_KINDS:
            raise SweepError(f"{where}write one of {{grid = [...]}}, {{choice = [...]}}, "
                             "{uniform = [low, high]}, {loguniform = [low, high]}")
        kind, values = next(iter(rng.items()))
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}{kind} needs a non-empty list")
        if kind in ("uniform", "loguniform"):
            if len(values) != 2 or not all(isinstance(v, int | float) for v in values) \
                    or not values[0] < values[1]:
                raise SweepError(f"{where}{kind} needs [low, high] numbers with low < high")
            if kind == "loguniform" and values[0] <= 0:
                raise SweepError(f"{where}loguniform needs low > 0")
        search[pname] = (kind, list(values))
    params = dict(data.get("params") or {})
    both = sorted(set(params) & set(search))
    if both:
        raise SweepError(f"{path}: {both} are both fixed in [params] and searched in [search]")
    select_on = str(data.get("select_on", "validation"))
    if select_on not in ("validation", "test"):
        raise SweepError(f"{path}: select_on must be 'validation' or 'test', got {select_on!r}")
    vf = float(data.get("validation_fraction", 0.2))
    if not 0 < vf < 1:
        raise SweepError(f"{path}: validation_fraction must be in (0, 1), got {vf}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{path}: `seeds` must be a non-empty list of integers")
    num_samples = int(data.get("num_samples", 1))
    if num_samples < 1:
        raise SweepError(f"{path}: num_samples must be at least 1")
    sw = SweepSpec(
        name=_sweep_name(data, path), method=data["method"],
        dataset=data["dataset"], search=search, params=params,
        dataset_params=dict(data.get("dataset_params") or {}), classes=data.get("classes", "all"),
        seeds=list(seeds), num_samples=num_samples, search_seed=int(data.get("search_seed", 0)),
        select_on=select_on, validation_fraction=vf, protocol=data.get("protocol"),
        fast=bool(data.get("fast", False)), time_limit_s=data.get("time_limit_s"),
        max_concurrent_trials=data.get("max_concurrent_trials"), path=path,
    )
    cls = _method_class(sw)
    unknown = sorted(set(search) - set(cls.param_names()))
    if unknown:
        raise SweepError(f"{path}: method {sw.method!r} has no parameters {unknown} "
                         f"(it takes {cls.param_names()})")
    return sw


def _method_class(sw: SweepSpec) -> type[Method]:
    try:
        cls, _ = resolve_method(sw.method, sw.params, f"{sw.path}: ")
    except SpecError as exc:
        raise SweepError(str(exc)) from exc
    return cls


# --------------------------------------------------------------------------------------------
# Jobs of a sweep
# --------------------------------------------------------------------------------------------


def sweep_jobs(sw: SweepSpec, config: Mapping[str, Any], data_root: str | None,
               trial: str = "") -> list[Job]:
    """The full jobs (all classes × seeds) of one config, tagged with the sweep and trial."""
    from occbench.harness.run.spec import expand, spec_from_dict

    cfg = {k: _plain(v) for k, v in config.items()}
    shown = ",".join(f"{k}={_short(v)}" for k, v in sorted(cfg.items()))
    dataset: dict[str, Any] = {"name": sw.dataset, "params": sw.dataset_params}
    if sw.classes is not None:
        dataset["classes"] = sw.classes
    if sw.protocol:
        dataset["protocol"] = sw.protocol
    if sw.time_limit_s:
        dataset["time_limit_s"] = sw.time_limit_s
    spec = spec_from_dict({
        "name": sw.name, "seeds": sw.seeds, "fast": sw.fast, "datasets": [dataset],
        "methods": [{"name": sw.method, "params": {**sw.params, **cfg},
                     "label": f"{sw.method} [sweep {sw.name}: {shown}]",
                     "selected_on_test": sw.selected_on_test}],
    }, sw.path)
    jobs = expand(spec, data_root).jobs
    tags = {"sweep": sw.name, "trial": trial, "config": cfg}
    return [Job.from_dict({**j.to_dict(), "tags": tags}) for j in jobs]


def _plain(v: Any) -> Any:
    """Tune hands numpy scalars; the store and the job hash want plain JSON values."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------------
# The validation objective (runs in a worker; never sees test labels)
# --------------------------------------------------------------------------------------------


def corrupt_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthetic anomalies: one local corruption per image, chosen at random among

    * ``swap``: two rectangles of the image exchange places (structure broken locally),
    * ``foreign``: a rectangle copied from another image at another place,
    * ``noise``: strong Gaussian noise (sigma 60 grey levels) inside a rectangle.

    Rectangles cover 1/16 to 1/4 of each side squared. ``uint8 (N, H, W, C)`` in and out.
    """
    n, h, w, _ = images.shape
    out = images.copy()
    for i in range(n):
        ph = int(rng.integers(max(1, h // 4), max(2, h // 2) + 1))
        pw = int(rng.integers(max(1, w // 4), max(2, w // 2) + 1))
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        y1, x1 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            a = images[i, y0:y0 + ph, x0:x0 + pw].copy()
            out[i, y0:y0 + ph, x0:x0 + pw] = images[i, y1:y1 + ph, x1:x1 + pw]
            out[i, y1:y1 + ph, x1:x1 + pw] = a
        elif kind == 1:
            j = int(rng.integers(0, n)) if n > 1 else i
            out[i, y1:y1 + ph, x1:x1 + pw] = images[j, y0:y0 + ph, x0:x0 + pw][::-1, ::-1]
        else:
            patch = out[i, y1:y1 + ph, x1:x1 + pw].astype(np.float64)
            patch += rng.normal(0, 60, patch.shape)
            out[i, y1:y1 + ph, x1:x1 + pw] = np.clip(patch, 0, 255).astype(np.uint8)
    return out


@dataclass
class ValidationSet:
    """Normal-only fit data and a labelled validation set made from held-out normal items."""

    fit: Data
    val: Data
    labels: np.ndarray  # 1 = pseudo anomaly; for video, per frame in video order


def make_validation(train: Data, fraction: float, rng: np.random.Generator,
                    anomalies: Callable[[np.ndarray, np.random.Generator], np.ndarray]
                    ) -> ValidationSet:
    """Hold out ``fraction`` of the normal training items; add one pseudo anomaly per held-out
    image (images), or corrupt the middle third of each held-out video's frames (video)."""
    if isinstance(train, ImageData):
        n = len(train)
        k = max(2, round(n * fraction))
        if n - k < 2:
            raise ValueError(f"{n} training images are too few to hold out a validation split")
        perm = rng.permutation(n)
        held, keep = train.images[perm[:k]], train.images[perm[k:]]
        anom = np.asarray(anomalies(held, rng))
        if anom.shape != held.shape or anom.dtype != np.uint8:
            raise ValueError(f"pseudo anomalies must be uint8 {held.shape}, got "
                             f"{anom.dtype} {anom.shape}")
        return ValidationSet(ImageData(keep), ImageData(np.concatenate([held, anom])),
                             np.r_[np.zeros(k, np.int8), np.ones(k, np.int8)])
    assert isinstance(train, VideoData)
    videos = list(train.videos)
    if len(videos) < 2:
        raise ValueError("video validation holds out whole training videos: need at least 2")
    k = max(1, round(len(videos) * fraction))
    k = min(k, len(videos) - 1)
    order = rng.permutation(len(videos))
    held = [videos[i] for i in order[:k]]
    keep = [videos[i] for i in sorted(order[k:])]
    val_videos, labels = [], []
    for v in held:
        frames = np.array(v.frames)  # a copy: the source may be a read-only memmap
        t = len(frames)
        lab = np.zeros(t, np.int8)
        lab[t // 3: 2 * t // 3] = 1
        frames[lab == 1] = anomalies(frames[lab == 1], rng)
        val_videos.append(Video(f"{v.video_id}-val", frames))
        labels.append(lab)
    return ValidationSet(VideoData(tuple(keep)), VideoData(tuple(val_videos)),
                         np.concatenate(labels))


def validation_auc(method: Method, vs: ValidationSet, context: Any) -> float:
    """Fit on ``vs.fit``, score ``vs.val``; ROC AUC against the pseudo labels (NaN frames out)."""
    from sklearn.metrics import roc_auc_score

    method.fit(vs.fit, context)
    out = method.score(vs.val, context)
    if isinstance(vs.val, VideoData):
        assert isinstance(out, Mapping)
        s = np.concatenate([np.asarray(out[v.video_id], np.float64) for v in vs.val.videos])
    else:
        s = np.asarray(out, np.float64)
    ok = np.isfinite(s)
    if len(np.unique(vs.labels[ok])) < 2:
        return float("nan")
    return float(roc_auc_score(vs.labels[ok], s[ok]))


def validation_objective(sweep: dict[str, Any], data_root: str | None, device: str,
                         config: Mapping[str, Any]) -> dict[str, Any]:
    """What a Tune trial reports: ``val_auc`` (mean over classes × seeds) and the per-item list.

    ``sweep`` is :class:`SweepSpec` as a dict (plain data travels to workers cheaply).
    """
    from occbench.harness.api import labels_blocked

    with labels_blocked():  # a trial has no business with test labels
        return _validation_objective(SweepSpec(**sweep), data_root, device, config)


def _validation_objective(sw: SweepSpec, data_root: str | None, device: str,
                          config: Mapping[str, Any]) -> dict[str, Any]:
    import logging
    import tempfile

    from occbench.harness.api import Context
    from occbench.harness.run.execute import load_split


    cls = registry.methods.get(sw.method)
    params = {**cls.default_params(), **sw.params, **{k: _plain(v) for k, v in config.items()}}
    ds = make_dataset(sw.dataset, sw.dataset_params, data_root)
    classes: list[str | None]
    if ds.modality == "image":
        known = ds.classes() or []
        classes = list(known) if sw.classes in (None, "all") else (
            [str(c) for c in sw.classes] if isinstance(sw.classes, list) else [str(sw.classes)])
    else:
        classes = [None]
    aucs: list[float] = []
    t0 = time.perf_counter()
    for c in classes:
        split = load_split(sw.dataset, sw.dataset_params, data_root, c)
        for seed in sw.seeds:
            method = cls(**params)
            rng = np.random.default_rng([seed, 7919])  # not the method's own stream
            hook = getattr(method, "pseudo_anomalies", None)
            anomalies = hook if callable(hook) else corrupt_images
            vs = make_validation(split.train, sw.validation_fraction, rng, anomalies)
            with tempfile.TemporaryDirectory(prefix="occbench-val-") as wd:
                ctx = Context(seed=seed, device=device, workdir=Path(wd), fast=sw.fast,
                              logger=logging.getLogger("occbench.sweep"))
                aucs.append(validation_auc(method, vs, ctx))
    finite = [a for a in aucs if math.isfinite(a)]
    return {"val_auc": float(np.mean(finite)) if finite else float("nan"),
            "val_auc_items": aucs, "val_time_s": round(time.perf_counter() - t0, 3),
            "pseudo_anomalies": "method" if callable(getattr(cls, "pseudo_anomalies", None))
            else "corrupt_images"}


# --------------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    table: pd.DataFrame
    best: dict[str, Any] | None
    path: Path
    failed_jobs: int = 0


def headline_auc(metrics: Mapping[str, Any]) -> float:
    """The leaderboard's headline AUC: ``auc`` for images, micro frame ``auc_micro`` for video."""
    v = metrics.get("auc", metrics.get("auc_micro"))
    return float("nan") if v is None else float(v)


def _sweep_name(data: Mapping[str, Any], path: str) -> str:
    """The sweep's ``name`` (it names ``STORE/sweeps/<name>.parquet`` and the Tune experiment
    folder): a given one must be a plain file name; the default, the file's stem, is slugged."""
    if "name" in data:
        try:
            return check_name(data["name"], "`name`")
        except UnsafePathError as exc:
            raise SweepError(f"{path}: {exc}") from None
    stem = Path(path).stem
    return stem if is_safe_name(stem) else safe_name(stem)


def sweep_table_path(store_path: str | Path, name: str) -> Path:
    """``STORE/sweeps/<name>.parquet``; UnsafePathError for a name that is not a file name."""
    p = Path(store_path) / "sweeps" / f"{check_name(name, 'sweep name')}.parquet"
    inside(store_path, p)  # a symlinked sweeps/ pointing out of the store
    return p


def run_sweep(sw: SweepSpec, store: Any, runner: Any, data_root: str | None = None,
              progress: Any = None,
              tune: Callable[..., list[dict[str, Any]]] | None = None) -> SweepResult:
    """Run the Tune trials (validation objective), then each config's full jobs; write the table.

    ``tune`` defaults to :func:`occbench.harness.run.ray_runner.tune_search` (injectable for tests).
    """
    from occbench.harness.run.driver import run_jobs

    if tune is None:
        from occbench.harness.run.ray_runner import tune_search

        tune = tune_search
    path = sweep_table_path(store.path, sw.name)  # before any trial: a bad name costs nothing
    cls = _method_class(sw)
    res = cls(**{**cls.default_params(), **sw.params}).resources_for()
    sweep_dict = {k: v for k, v in sw.__dict__.items()}
    trials = tune(
        method=sw.method, search=sw.search, num_samples=sw.num_samples, seed=sw.search_seed,
        objective_args=(sweep_dict, data_root), resources=res,
        max_concurrent=sw.max_concurrent_trials, name=sw.name,
    )
    rows: list[dict[str, Any]] = []
    all_jobs: dict[str, Job] = {}  # two trials may draw the same config: run its jobs once
    for t in trials:
        jobs = sweep_jobs(sw, t["config"], data_root, t["trial_id"])
        for j in jobs:
            all_jobs.setdefault(j.job_id, j)
        rows.append({"trial_id": t["trial_id"], "config": t["config"], "jobs": jobs,
                     "val_auc": t.get("val_auc"), "val_time_s": t.get("val_time_s"),
                     "pseudo_anomalies": t.get("pseudo_anomalies"), "error": t.get("error")})
    summary = run_jobs(list(all_jobs.values()), store, runner, data_root, progress)
    table_rows = []
    for r in rows:
        aucs = []
        for j in r["jobs"]:
            if store.has(j.job_id):
                aucs.append(headline_auc(store.record(j.job_id).get("metrics") or {}))
        row: dict[str, Any] = {
            "sweep": sw.name, "method": sw.method, "dataset": sw.dataset,
            "trial_id": r["trial_id"],
            **{f"param_{k}": _plain(v) for k, v in r["config"].items()},
            "val_auc": r["val_auc"], "test_auc": float(np.mean(aucs)) if aucs and len(aucs) == len(
                r["jobs"]) else np.nan,
            "n_jobs": len(r["jobs"]), "job_ids": json.dumps([j.job_id for j in r["jobs"]]),
            "selected_on": sw.select_on, "selected_on_test": sw.selected_on_test,
            "validation_fraction": sw.validation_fraction,
            "pseudo_anomalies": r["pseudo_anomalies"], "trial_error": r["error"],
            "val_time_s": r["val_time_s"],
        }
        table_rows.append(row)
    table = pd.DataFrame(table_rows)
    key = "test_auc" if sw.selected_on_test else "val_auc"
    best = None
    table["best"] = False
    if not table.empty and table[key].notna().any():
        i = int(table[key].astype(float).idxmax())
        table.loc[i, "best"] = True
        best = table.loc[i].to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # readers (the leaderboard) never see a half-written table
    return SweepResult(table, best, path, summary.failed)


def search_values(search: Mapping[str, tuple[str, Sequence[Any]]]) -> list[str]:
    """Human-readable ranges, for the CLI."""
    return [f"{k} ~ {kind}{list(v)}" for k, (kind, v) in search.items()]

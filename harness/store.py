"""The run store: one folder per finished job, content-addressed by job id.

Layout (schema ``occbench.store/1``)::

    STORE/occbench-store.json          {"schema": "occbench.store/1"}
    STORE/runs/<job_id>/record.json    RunRecord: spec, metrics, provenance (see RECORD_SCHEMA)
    STORE/runs/<job_id>/scores.parquet one row per test item: video_id, frame, raw, score, label
    STORE/runs/<job_id>/log.txt        what the method logged
    STORE/failed/<job_id>.json         the last failure of a job that has not succeeded
    STORE/locks/<job_id>.lock          held while a driver runs that job

``raw`` is the method's score (NaN where a clip-based method could not score a frame), ``score``
the score after the protocol (NaN where the protocol dropped the frame), ``label`` 1 = anomalous.
A run folder is written under a temporary name and renamed into place, so readers never see a
half-written run, and a second driver finishing the same job keeps the first result.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

STORE_SCHEMA = "occbench.store/1"
RECORD_SCHEMA = "occbench.run/1"

#: Keys of a run record; the JSON schema is documented in docs/store-format.md.
RECORD_KEYS = ("schema", "job_id", "status", "job", "metrics", "provenance", "error", "protocol")


class StoreError(RuntimeError):
    pass


class DiskFullError(StoreError):
    pass


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class RunStore:
    """A run store rooted at ``path`` (created on first write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- layout --------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def failed_dir(self) -> Path:
        return self.path / "failed"

    @property
    def locks_dir(self) -> Path:
        return self.path / "locks"

    #: What a store folder may hold; anything else before the marker exists means a foreign
    #: folder. (Another driver creating the same new store at the same moment writes these.)
    OWN_ENTRIES = frozenset({"occbench-store.json", "runs", "failed", "locks", "sweeps",
                             "pruned"})

    def init(self) -> RunStore:
        """Create the store, or check that an existing folder is one (safe when racing)."""
        marker = self.path / "occbench-store.json"
        if self.path.exists() and not marker.exists():
            foreign = sorted(p.name for p in self.path.iterdir()
                             if p.name not in self.OWN_ENTRIES
                             and not p.name.startswith(".occbench-store.json."))
            if foreign:
                raise StoreError(
                    f"{self.path} exists and is not an occbench store (no occbench-store.json; "
                    f"it holds {foreign[:5]}); choose an empty or new folder"
                )
        for d in (self.runs_dir, self.failed_dir, self.locks_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            # atomic replace: two drivers racing here both write the same content
            _atomic_write_text(marker, json.dumps({"schema": STORE_SCHEMA}) + "\n")
        else:
            schema = json.loads(marker.read_text()).get("schema")
            if schema != STORE_SCHEMA:
                raise StoreError(f"{marker}: store schema {schema!r}, this occbench reads "
                                 f"{STORE_SCHEMA!r}")
        return self

    # -- queries -------------------------------------------------------------------------------
    def has(self, job_id: str) -> bool:
        return (self.runs_dir / job_id / "record.json").exists()

    def job_ids(self) -> list[str]:
        if not self.runs_dir.exists():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir()
                      if not p.name.startswith(".") and (p / "record.json").exists())

    def record(self, job_id: str) -> dict[str, Any]:
        p = self.runs_dir / job_id / "record.json"
        try:
            return dict(json.loads(p.read_text()))
        except FileNotFoundError:
            raise StoreError(f"no run {job_id} in {self.path}") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{p}: corrupt record ({exc}); delete the folder and rerun") from exc

    def records(self) -> Iterator[dict[str, Any]]:
        for jid in self.job_ids():
            yield self.record(jid)

    def failures(self) -> list[dict[str, Any]]:
        if not self.failed_dir.exists():
            return []
        out = []
        for p in sorted(self.failed_dir.glob("*.json")):
            if not self.has(p.stem):
                out.append(json.loads(p.read_text()))
        return out

    def scores(self, job_id: str) -> pd.DataFrame:
        return pd.read_parquet(self.runs_dir / job_id / "scores.parquet")

    def log(self, job_id: str) -> str:
        p = self.runs_dir / job_id / "log.txt"
        return p.read_text() if p.exists() else ""

    # -- writes --------------------------------------------------------------------------------
    @contextmanager
    def claim(self, job_id: str) -> Iterator[bool]:
        """Try to take the job's lock without waiting; yields False if another driver holds it."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.locks_dir / f"{job_id}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def write_run(self, record: Mapping[str, Any], scores: pd.DataFrame, log: str = "") -> bool:
        """Write a finished run atomically. Returns False if the run was already there."""
        job_id = str(record["job_id"])
        final = self.runs_dir / job_id
        if final.exists():
            return False
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{job_id}.", dir=self.runs_dir))
        try:
            scores.to_parquet(tmp / "scores.parquet", index=False)
            (tmp / "log.txt").write_text(log)
            (tmp / "record.json").write_text(json.dumps(record, indent=1, sort_keys=True,
                                                        default=_json_default) + "\n")
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if final.exists():  # another driver won the race: keep its result
                    return False
                raise exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"disk full while writing run {job_id} into {self.path}: free space and rerun "
                    "the same command; finished runs are kept and only missing ones will run"
                ) from exc
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        failed = self.failed_dir / f"{job_id}.json"
        if failed.exists():
            failed.unlink()
        return True

    def write_failure(self, record: Mapping[str, Any]) -> None:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        p = self.failed_dir / f"{record['job_id']}.json"
        prev = json.loads(p.read_text()) if p.exists() else {}
        rec = dict(record)
        rec["attempts"] = int(prev.get("attempts", 0)) + 1
        _atomic_write_text(p, json.dumps(rec, indent=1, sort_keys=True, default=_json_default))

    @property
    def pruned_dir(self) -> Path:
        return self.path / "pruned"

    def set_aside(self, job_id: str) -> bool:
        """Move a finished run out of ``runs/`` into ``pruned/`` (kept, never deleted): tables,
        exports and resumes no longer see it. False if the job's lock is held or it is gone."""
        with self.claim(job_id) as got:
            if not got or not self.has(job_id):
                return False
            self.pruned_dir.mkdir(parents=True, exist_ok=True)
            dst = self.pruned_dir / job_id
            if dst.exists():  # pruned before, then run again: keep the older copy aside too
                dst = self.pruned_dir / f"{job_id}.{uuid.uuid4().hex[:8]}"
            os.rename(self.runs_dir / job_id, dst)  # same file system: atomic
            return True

    def merge_from(self, other: RunStore) -> tuple[int, int]:
        """Copy runs of ``other`` missing here; returns (copied, already present)."""
        self.init()
        copied = present = 0
        for jid in other.job_ids():
            rec = other.record(jid)
            if rec.get("job_id") != jid:
                raise StoreError(f"{other.runs_dir / jid}: record says job {rec.get('job_id')}")
            if self.has(jid):
                present += 1
                continue
            tmp = Path(tempfile.mkdtemp(prefix=f".{jid}.", dir=self.runs_dir))
            try:
                for f in (other.runs_dir / jid).iterdir():
                    shutil.copy2(f, tmp / f.name)
                try:
                    os.rename(tmp, self.runs_dir / jid)
                    copied += 1
                except OSError:
                    if not self.has(jid):
                        raise
                    present += 1
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return copied, present


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def scores_frame(raw: Mapping[str, np.ndarray], evaluated: Mapping[str, np.ndarray],
                 labels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per-item table: video_id ('' for images), frame (index within video), raw, score, label.

    ``evaluated`` holds the protocol's scores for the non-dropped frames, in order.
    """
    parts = []
    for vid, lab in labels.items():
        r = np.asarray(raw[vid], dtype=np.float64)
        ev = np.full(len(r), np.nan)
        keep = ~np.isnan(r) if len(evaluated[vid]) != len(r) else np.ones(len(r), bool)
        ev[keep] = evaluated[vid]
        parts.append(pd.DataFrame({
            "video_id": pd.Series([vid] * len(r), dtype="string"),
            "frame": np.arange(len(r), dtype=np.int64),
            "raw": r, "score": ev, "label": np.asarray(lab).astype(np.int8),
        }))
    return pd.concat(parts, ignore_index=True)

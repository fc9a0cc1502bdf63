"""``occbench export``: everything needed to re-check a leaderboard without occbench.

``runs.<fmt>``: one row per finished run (job, metrics, protocol, provenance flattened).
``scores.<fmt>``: one row per test item of every run: job_id, video_id, frame, raw, score, label.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from occbench.harness.store.runstore import RunStore


def runs_table(store: RunStore) -> pd.DataFrame:
    rows = []
    for rec in store.records():
        flat = {"job_id": rec["job_id"], "status": rec["status"]}
        for section in ("job", "metrics", "provenance"):
            for k, v in (rec.get(section) or {}).items():
                if k == "job_id":
                    continue
                flat[f"{section}.{k}"] = v if not isinstance(v, (dict, list)) else repr(v)
        rows.append(flat)
    return pd.DataFrame(rows)


def export_store(store: str | Path | RunStore, out: str | Path, fmt: str = "csv") -> list[Path]:
    """Write ``runs.<fmt>`` and ``scores.<fmt>`` into ``out``; returns the paths."""
    st = store if isinstance(store, RunStore) else RunStore(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_table(st)
    parts = []
    for jid in st.job_ids():
        s = st.scores(jid)
        s.insert(0, "job_id", jid)
        parts.append(s)
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["job_id", "video_id", "frame", "raw", "score", "label"])
    paths = [out / f"runs.{fmt}", out / f"scores.{fmt}"]
    for df, p in zip((runs, scores), paths, strict=True):
        if fmt == "csv":
            df.to_csv(p, index=False)
        else:
            df.to_parquet(p, index=False)
    return paths

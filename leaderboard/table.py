"""Runs in a store → tidy tables, and the aggregated mean ± std table of ``occbench board``.

Reads only the run store. ``auc`` is the headline metric: the one-vs-rest AUROC for image jobs
and the micro (pooled) frame AUC for video jobs. For image protocols a seed's score is the mean
over normal classes; the table then gives mean ± std of that over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from occbench.harness.store import RunStore

RUN_COLUMNS = [
    "job_id", "method", "label", "method_version", "dataset", "normal_class", "protocol", "seed",
    "modality", "selected_on_test", "auc", "auc_macro", "eer", "n_items", "wall_time_s",
    "peak_rss_mb", "peak_gpu_mb", "n_parameters", "device", "git_sha",
]


def runs_frame(store: RunStore | str | Path) -> pd.DataFrame:
    """One row per successful run (columns ``RUN_COLUMNS``)."""
    st = store if isinstance(store, RunStore) else RunStore(store)
    rows: list[dict[str, Any]] = []
    for rec in st.records():
        job, m, prov = rec["job"], rec["metrics"] or {}, rec.get("provenance") or {}
        video = job["modality"] == "video"
        rows.append({
            "job_id": rec["job_id"], "method": job["method"],
            "label": job.get("label") or job["method"], "method_version": job["method_version"],
            "dataset": job["dataset"], "normal_class": job["normal_class"],
            "protocol": job["protocol"], "seed": job["seed"], "modality": job["modality"],
            "selected_on_test": bool(job.get("selected_on_test", False)),
            "auc": m.get("auc_micro") if video else m.get("auc"),
            "auc_macro": m.get("auc_macro") if video else np.nan,
            "eer": m.get("eer"), "n_items": m.get("n_items"),
            "wall_time_s": prov.get("wall_time_s"), "peak_rss_mb": prov.get("peak_rss_mb"),
            "peak_gpu_mb": prov.get("peak_gpu_mb"), "n_parameters": prov.get("n_parameters"),
            "device": prov.get("device"), "git_sha": prov.get("git_sha"),
        })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for c in ("auc", "auc_macro", "eer", "wall_time_s", "peak_rss_mb", "peak_gpu_mb"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, dataset, protocol, seed): image class means, video metrics."""
    keys = ["label", "method", "dataset", "protocol", "seed", "selected_on_test"]
    g = df.groupby(keys, dropna=False)
    out = g.agg(auc=("auc", "mean"), auc_macro=("auc_macro", "mean"), eer=("eer", "mean"),
                n_classes=("normal_class", "nunique"), wall_time_s=("wall_time_s", "sum"))
    return out.reset_index()


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (method label, dataset, protocol)."""
    if df.empty:
        return pd.DataFrame(columns=["method", "dataset", "protocol", "seeds", "auc_mean",
                                     "auc_std", "auc_macro_mean", "eer_mean", "eer_std"])
    ps = per_seed(df)
    keys = ["label", "dataset", "protocol", "selected_on_test"]
    g = ps.groupby(keys, dropna=False)
    out = g.agg(
        seeds=("seed", "nunique"), classes=("n_classes", "max"),
        auc_mean=("auc", "mean"), auc_std=("auc", "std"),
        auc_macro_mean=("auc_macro", "mean"), auc_macro_std=("auc_macro", "std"),
        eer_mean=("eer", "mean"), eer_std=("eer", "std"),
        wall_time_s=("wall_time_s", "sum"),
    ).reset_index().rename(columns={"label": "method"})
    return out.sort_values(["dataset", "protocol", "auc_mean"],
                           ascending=[True, True, False]).reset_index(drop=True)


def _pm(mean: float, std: float, scale: float = 100.0) -> str:
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def display_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings (percent) for Markdown/terminal output."""
    return pd.DataFrame({
        "dataset": agg["dataset"], "method": agg["method"]
        + np.where(agg["selected_on_test"], " [selected on test]", ""),
        "protocol": agg["protocol"], "seeds": agg["seeds"],
        "AUC (micro) %": [_pm(m, s) for m, s in zip(agg["auc_mean"], agg["auc_std"], strict=True)],
        "AUC (macro) %": [_pm(m, s) for m, s in zip(agg["auc_macro_mean"], agg["auc_macro_std"],
                                                     strict=True)],
        "EER %": [_pm(m, s) for m, s in zip(agg["eer_mean"], agg["eer_std"], strict=True)],
        "wall s": agg["wall_time_s"].round(1),
    })


def write_board(store: RunStore | str | Path, out: str | Path) -> tuple[pd.DataFrame, list[Path]]:
    """Write ``leaderboard.csv`` (numbers) and ``leaderboard.md`` (mean ± std) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(runs_frame(store))
    csv, md = out / "leaderboard.csv", out / "leaderboard.md"
    agg.to_csv(csv, index=False)
    md.write_text(
        "# occbench leaderboard\n\nMean ± std over seeds; AUC = frame-level micro AUC for video, "
        "class-mean AUROC for images (one vs rest).\n\n"
        + markdown(display_table(agg)) + "\n"
        if not agg.empty else "# occbench leaderboard\n\nNo runs yet.\n"
    )
    return agg, [csv, md]


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (pipes in cells escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])

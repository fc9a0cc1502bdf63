"""Everything the leaderboard shows, computed once from a run store.

:func:`analyze` gathers the tables (runs, per seed, aggregate with intervals, per class),
the paired comparisons per dataset (Wilcoxon + Holm), the ranking across datasets (average ranks,
Friedman, Nemenyi CD, rank bootstrap over seeds), published vs reproduced, and the sweep records
(``STORE/sweeps/*.parquet``). :func:`write_tables` writes them as CSV. The site renders them.

Rankings use the headline AUC (higher = better) of runs not tuned on the test set
(``selected_on_test`` runs are shown in tables but never ranked), with one protocol per dataset:
the modality's default protocol when it has runs, else the protocol with most runs.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from occbench.harness.scoring.protocols import DEFAULT_PROTOCOL
from occbench.harness.store.paths import is_job_id
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard import published as pub
from occbench.leaderboard.stats import (
    FriedmanResult,
    friedman_nemenyi,
    pairwise_comparisons,
    rank_bootstrap,
    stable_seed,
)
from occbench.leaderboard.table import aggregate, markdown, per_class, per_seed, runs_frame

#: One row per failed job (``STORE/failed/<job_id>.json`` of a job with no finished run).
FAILURE_COLUMNS = ["label", "method", "dataset", "protocol", "normal_class", "seed", "status",
                   "reason", "attempts", "failed_at", "job_id"]
#: Characters of a failure's reason kept for the tables (its first line; the full message and
#: traceback stay in the failure record).
REASON_CHARS = 300


@dataclass
class Analysis:
    """All leaderboard tables of one store (see module docstring)."""

    runs: pd.DataFrame
    seeds: pd.DataFrame
    agg: pd.DataFrame
    classes: pd.DataFrame
    comparisons: pd.DataFrame
    ranking_blocks: dict[str, str]  # dataset -> protocol used for ranking
    friedman: FriedmanResult | None
    rank_uncertainty: pd.DataFrame
    p_best: pd.DataFrame  # per dataset: method, p_best (bootstrap over seeds)
    published: pd.DataFrame
    sweeps: dict[str, pd.DataFrame] = field(default_factory=dict)
    n_boot: int = 1000
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=FAILURE_COLUMNS))  # see failures_frame
    #: job id -> stat key of the files each row was read from (``runs_frame``'s ``keys_out``)
    row_keys: dict[str, str] = field(default_factory=dict)


def ranking_protocols(runs: pd.DataFrame) -> dict[str, str]:
    """Dataset → the one protocol its ranking uses (default of the modality, else most runs)."""
    out: dict[str, str] = {}
    ok = runs[~runs["selected_on_test"]]
    for ds, g in ok.groupby("dataset", sort=True):
        mod = str(g["modality"].iloc[0])
        default = DEFAULT_PROTOCOL.get(mod)
        counts = g["protocol"].value_counts()
        if default in counts.index:
            out[str(ds)] = str(default)
        else:
            top = counts[counts == counts.max()].index
            out[str(ds)] = str(sorted(top)[0])
    return out


def comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    """Paired Wilcoxon tests of every method pair per dataset × protocol, Holm within each."""
    parts = []
    ok = runs[~runs["selected_on_test"]]
    for (ds, pr), g in ok.groupby(["dataset", "protocol"], sort=True):
        if g["label"].nunique() < 2:
            continue
        c = pairwise_comparisons(g, method="label", unit=("seed", "normal_class"), value="auc")
        parts.append(c.assign(dataset=ds, protocol=pr))
    if not parts:
        return pd.DataFrame(columns=["dataset", "protocol", "a", "b", "n_pairs", "mean_diff",
                                     "wins", "ties", "losses", "statistic", "p", "p_holm",
                                     "significant"])
    out = pd.concat(parts, ignore_index=True)
    return out[["dataset", "protocol", *[c for c in out.columns
                                         if c not in ("dataset", "protocol")]]]


def _stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def trusted_runs(runs: pd.DataFrame, warn: Callable[[str], None] = _stderr) -> pd.DataFrame:
    """``runs`` without rows whose ``job_id`` is not a job id (20 lowercase hex digits).

    A record is plugin- and user-writable text: its job id becomes the path of its run page and
    of the files read for it, so one like ``../../x`` is left out, with one line to ``warn``.
    """
    ok = runs["job_id"].map(is_job_id).astype(bool)
    for jid in runs.loc[~ok, "job_id"]:
        warn(f"run record with job id {str(jid)[:60]!r} left out: not 20 lowercase hex digits "
             "(a damaged or hand-made record; `occbench store verify` lists it)")
    return runs[ok].reset_index(drop=True) if not ok.all() else runs


def _reason(err: Any) -> str:
    """``Type: first line of the message`` of a failure's ``error`` (capped)."""
    e = err if isinstance(err, dict) else {}
    lines = [ln.strip() for ln in str(e.get("message") or "").splitlines() if ln.strip()]
    typ = str(e.get("type") or "error")
    text = f"{typ}: {lines[0]}" if lines else typ
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def failures_frame(store: RunStore, warn: Callable[[str], None] = _stderr) -> pd.DataFrame:
    """One row per failed job (:data:`FAILURE_COLUMNS`), sorted by entry, class, seed.

    ``reason`` is the error type and the first line of its message; ``normal_class`` is None
    for video jobs. A failure record that is not a JSON object is left out with one line.
    """
    rows = []
    for f in store.failures():
        if not isinstance(f, dict):
            warn(f"failure record of type {type(f).__name__} left out of {store.failed_dir}")
            continue
        j = f.get("job")
        job: dict[str, Any] = j if isinstance(j, dict) else {}
        proto = f.get("protocol")
        pid = job.get("protocol") or (proto.get("id") if isinstance(proto, dict) else None)
        rows.append({
            "label": str(job.get("label") or job.get("method") or "?"),
            "method": str(job.get("method") or "?"), "dataset": str(job.get("dataset") or "?"),
            "protocol": str(pid or "?"),
            "normal_class": None if job.get("normal_class") is None
            else str(job.get("normal_class")),
            "seed": job.get("seed"), "status": str(f.get("status") or "failed"),
            "reason": _reason(f.get("error")), "attempts": f.get("attempts"),
            "failed_at": f.get("failed_at"), "job_id": str(f.get("job_id") or ""),
        })
    df = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    if df.empty:
        return df
    df["_c"] = df["normal_class"].map(_class_key)
    df["_s"] = pd.to_numeric(df["seed"], errors="coerce")
    df = df.sort_values(["label", "dataset", "protocol", "_c", "_s", "job_id"], kind="stable")
    df = df.drop(columns=["_c", "_s"]).reset_index(drop=True)
    # pandas turns None into NaN in a column with strings; video jobs have no class: None
    df["normal_class"] = pd.Series([None if _no_class(c) else str(c) for c in df["normal_class"]],
                                   dtype=object)
    return df


def _no_class(c: Any) -> bool:
    """No normal class (a video job): None, or the NaN pandas makes of it in a column."""
    return c is None or (isinstance(c, float) and c != c)


def _class_key(c: Any) -> tuple[int, float, str]:
    """Natural order of class names: video (no class) first, '2' before '10', then text."""
    if _no_class(c):
        return (0, 0.0, "")
    s = str(c)
    return (1, float(s), "") if s.isdigit() else (2, 0.0, s)


def _seeds_text(seeds: Any) -> str:
    vals = sorted({int(s) if isinstance(s, int | float) and s == s else s for s in seeds},
                  key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))
    return ", ".join(str(v) for v in vals)


def failure_groups(f: pd.DataFrame) -> list[dict[str, Any]]:
    """Failures per entry (label × dataset × protocol), then per reason: where it failed.

    Each entry: ``label, dataset, protocol, n, classes`` (sorted; empty for video), ``seeds``,
    ``reasons``: a list of ``{reason, status, n, where}`` with ``where`` a list of
    ``{normal_class, seeds}`` (``normal_class`` None for video; ``seeds`` as text "0, 1, 2").
    """
    out: list[dict[str, Any]] = []
    if f.empty:
        return out
    for (label, ds, pr), g in f.groupby(["label", "dataset", "protocol"], sort=True):
        reasons = []
        for (reason, status), gr in g.groupby(["reason", "status"], sort=True):
            where = []
            cls = [None if _no_class(c) else str(c) for c in gr["normal_class"]]
            for c in sorted(set(cls), key=_class_key):
                seeds = [s for s, k in zip(gr["seed"], cls, strict=True) if k == c]
                where.append({"normal_class": c, "seeds": _seeds_text(seeds)})
            reasons.append({"reason": reason, "status": status, "n": len(gr), "where": where})
        reasons.sort(key=lambda r: (-r["n"], r["reason"]))
        classes = sorted({str(c) for c in g["normal_class"] if not _no_class(c)},
                         key=_class_key)
        out.append({"label": label, "dataset": ds, "protocol": pr, "n": len(g),
                    "classes": classes, "seeds": _seeds_text(g["seed"]), "reasons": reasons})
    return out


def failures_markdown(f: pd.DataFrame) -> str:
    """The failed-jobs section of ``leaderboard.md``: one row per entry, reason and class.

    Plugin text (labels, error messages) is HTML-escaped: Markdown renderers pass HTML through.
    """
    if f.empty:
        return "## Failed jobs\n\nNone.\n"
    rows = []
    for e in failure_groups(f):
        for r in e["reasons"]:
            for w in r["where"]:
                rows.append({"entry": e["label"], "dataset": e["dataset"],
                             "protocol": e["protocol"],
                             "class": "—" if w["normal_class"] is None else w["normal_class"],
                             "seeds": w["seeds"], "status": r["status"], "reason": r["reason"]})
    table = pd.DataFrame(rows).map(lambda v: html.escape(str(v), quote=False))
    return (f"## Failed jobs ({len(f)})\n\nJobs with no finished run, per entry, class and "
            "seed, with the error type and the first line of its message (the full record is "
            "in STORE/failed/<job_id>.json; `occbench store status` lists them).\n\n"
            + markdown(table) + "\n")


def analyze(store: RunStore | str | Path, published_path: str | Path | None = None,
            n_boot: int = 1000, seed: int = 0, level: float = 0.95,
            warn: Callable[[str], None] = _stderr, cache_in: Path | None = None,
            cache_out: Path | None = None) -> Analysis:
    """Compute every table of the leaderboard from ``store`` (deterministic for a given seed).

    Records with an invalid job id are left out (see :func:`trusted_runs`), one line each to
    ``warn``. ``cache_in``/``cache_out``: the row cache of :func:`runs_frame` (the same tables
    with or without it).
    """
    st = store if isinstance(store, RunStore) else RunStore(store)
    row_keys: dict[str, str] = {}
    runs = trusted_runs(runs_frame(st, cache_in=cache_in, cache_out=cache_out,
                                   keys_out=row_keys), warn)
    seeds = per_seed(runs) if not runs.empty else pd.DataFrame()
    agg = aggregate(runs, level, seeds=seeds if not runs.empty else None)
    classes = per_class(runs, level) if not runs.empty else pd.DataFrame()
    comp = comparisons(runs)
    blocks = ranking_protocols(runs) if not runs.empty else {}
    fr, ru, pb = None, pd.DataFrame(columns=["method", "rank_mean", "rank_lo", "rank_hi",
                                             "p_best"]), []
    if blocks:
        # rank by label (a method's variants are separate entries); the plugin name goes
        sv = seeds[~seeds["selected_on_test"]].drop(columns=["method"])
        sv = sv[[blocks.get(d) == p for d, p in zip(sv["dataset"], sv["protocol"], strict=True)]]
        matrix = sv.groupby(["dataset", "label"])["auc"].mean().unstack("label")
        fr = friedman_nemenyi(matrix)
        if fr is not None:
            ru = rank_bootstrap(sv.rename(columns={"dataset": "block", "label": "method"}),
                                fr.methods, fr.blocks, n_boot=n_boot,
                                seed=stable_seed(seed, "ranks"))
        for ds in sorted(blocks):
            d = sv[sv["dataset"] == ds]
            ms = sorted(d["label"].unique())
            if len(ms) < 2:
                continue
            r = rank_bootstrap(d.rename(columns={"dataset": "block", "label": "method"}), ms,
                               [ds], n_boot=n_boot, seed=stable_seed(seed, "best", ds))
            pb.append(r.assign(dataset=ds, protocol=blocks[ds]))
    p_best = (pd.concat(pb, ignore_index=True) if pb else
              pd.DataFrame(columns=["dataset", "protocol", "method", "rank_mean", "rank_lo",
                                    "rank_hi", "p_best"]))
    published = pub.compare(pub.load_published(published_path), runs, level)
    return Analysis(runs=runs, seeds=seeds, agg=agg, classes=classes, comparisons=comp,
                    ranking_blocks=blocks, friedman=fr, rank_uncertainty=ru, p_best=p_best,
                    published=published, sweeps=load_sweeps(st), n_boot=n_boot,
                    failures=failures_frame(st, warn), row_keys=row_keys)


def load_sweeps(store: RunStore) -> dict[str, pd.DataFrame]:
    """``STORE/sweeps/*.parquet`` by file stem (empty when there are none).

    A file that cannot be read is skipped with its error recorded as a one-row frame with an
    ``error`` column, so the site says so instead of failing the whole build.
    """
    d = store.path / "sweeps"
    out: dict[str, pd.DataFrame] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.parquet")):
        try:
            out[p.stem] = pd.read_parquet(p)
        except Exception as exc:  # a corrupt sweep file must not take the leaderboard down
            out[p.stem] = pd.DataFrame({"error": [f"{p}: {type(exc).__name__}: {exc}"]})
    return out


def write_tables(a: Analysis, out: str | Path) -> list[Path]:
    """Write the analysis tables as CSV files into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "per_class.csv": a.classes, "comparisons.csv": a.comparisons,
        "ranks.csv": _ranks_table(a), "p_best.csv": a.p_best,
        "published_vs_reproduced.csv": a.published, "failures.csv": a.failures,
    }
    paths = []
    for name, df in files.items():
        p = out / name
        df.to_csv(p, index=False, lineterminator="\n")
        paths.append(p)
    return paths


def _ranks_table(a: Analysis) -> pd.DataFrame:
    if a.friedman is None:
        return pd.DataFrame(columns=["method", "avg_rank", "rank_lo", "rank_hi", "p_best"])
    r = pd.DataFrame({"method": list(a.friedman.avg_rank),
                      "avg_rank": list(a.friedman.avg_rank.values())})
    r = r.merge(a.rank_uncertainty[["method", "rank_lo", "rank_hi", "p_best"]], on="method",
                how="left")
    return r.sort_values(["avg_rank", "method"]).reset_index(drop=True)

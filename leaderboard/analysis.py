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

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from occbench.harness.protocols import DEFAULT_PROTOCOL
from occbench.harness.store import RunStore
from occbench.leaderboard import published as pub
from occbench.leaderboard.stats import (
    FriedmanResult,
    friedman_nemenyi,
    pairwise_comparisons,
    rank_bootstrap,
)
from occbench.leaderboard.table import aggregate, per_class, per_seed, runs_frame


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


def stable_seed(*parts: object) -> int:
    """A seed derived from strings (Python's ``hash`` is salted per process, this is not)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


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


def analyze(store: RunStore | str | Path, published_path: str | Path | None = None,
            n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Analysis:
    """Compute every table of the leaderboard from ``store`` (deterministic for a given seed)."""
    st = store if isinstance(store, RunStore) else RunStore(store)
    runs = runs_frame(st)
    seeds = per_seed(runs) if not runs.empty else pd.DataFrame()
    agg = aggregate(runs, level)
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
                    published=published, sweeps=load_sweeps(st), n_boot=n_boot)


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
        "published_vs_reproduced.csv": a.published,
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

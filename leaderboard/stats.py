"""Statistics of the leaderboard: intervals, bootstrap, paired tests, Holm, Friedman/Nemenyi.

Conventions: AUC and EER are fractions in [0, 1]; higher AUC is better, lower EER is better; a
rank of 1 is the best method. Every random procedure takes an explicit ``seed`` so the same store
gives the same numbers (and the same site, byte for byte).

Why these choices (see docs/leaderboard.md for the long version):

* Over seeds we report a Student-t 95 % interval of the mean (``scipy.stats.t``). With 3 seeds it
  is wide — that is the honest answer. With one seed there is no interval (NaN), never a fake one.
* One video run's frame AUC gets a bootstrap over **videos**: frames of one video are strongly
  correlated, so resampling frames would give far too narrow intervals.
* Paired comparisons use the Wilcoxon signed-rank test: differences of AUCs are bounded and
  skewed, so the normality a paired t-test needs is doubtful, and the signed-rank test needs only
  symmetry. Its price: with fewer than 6 pairs it cannot reach p < 0.05 (two-sided), which the
  tables say instead of pretending. p-values are Holm-corrected within a dataset.
* Across datasets: average ranks, the Friedman test and the Nemenyi critical difference (Demšar,
  JMLR 2006), with rank uncertainty from a bootstrap over seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

#: Nemenyi q_alpha for alpha = 0.05 and k = 2..10 classifiers (Demšar 2006, Table 5a):
#: the studentized range statistic at infinite degrees of freedom divided by sqrt(2).
#: Larger k falls back to scipy.stats.studentized_range (the table is checked against it).
NEMENYI_Q05: dict[int, float] = {
    2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164,
}


# ----------------------------------------------------------------------------------------------
# intervals over seeds
# ----------------------------------------------------------------------------------------------


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval of the mean of ``values`` (NaNs ignored).

    Returns ``(nan, nan)`` with fewer than two values: one seed says nothing about spread.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 2:
        return (math.nan, math.nan)
    if np.ptp(x) == 0.0:  # identical seeds (deterministic method): the interval is the point
        return (float(x[0]), float(x[0]))
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return (float(lo), float(hi))


def summarize(df: pd.DataFrame, keys: list[str], value: str, level: float = 0.95,
              bounds: tuple[float, float] | None = (0.0, 1.0)) -> pd.DataFrame:
    """Per group of ``keys``: ``{value}_mean, _std, _n, _lo, _hi`` (t interval) of ``value``.

    ``bounds`` clips the interval to the metric's range (AUC and EER live in [0, 1]; a t interval
    of a mean near 1 can otherwise poke past it); ``None`` leaves it as scipy gives it.
    """
    rows = []
    for k, g in df.groupby(keys, dropna=False, sort=True):
        x = pd.to_numeric(g[value], errors="coerce").to_numpy(dtype=np.float64)
        x = x[~np.isnan(x)]
        lo, hi = t_interval(x, level)
        if bounds is not None and not math.isnan(lo):
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        kk = k if isinstance(k, tuple) else (k,)
        std = math.nan if len(x) < 2 else 0.0 if np.ptp(x) == 0 else float(x.std(ddof=1))
        # identical values: take one exactly (a float mean of equal numbers can be off by 1 ulp)
        mean = math.nan if not len(x) else float(x[0]) if np.ptp(x) == 0 else float(x.mean())
        rows.append({**dict(zip(keys, kk, strict=True)),
                     f"{value}_mean": mean,
                     f"{value}_std": std,
                     f"{value}_n": len(x), f"{value}_lo": lo, f"{value}_hi": hi})
    cols = [*keys, *(f"{value}_{s}" for s in ("mean", "std", "n", "lo", "hi"))]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------------
# bootstrap over videos for one run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoBootstrap:
    """Percentile bootstrap of pooled (micro) frame AUC and EER, resampling whole videos."""

    auc: float
    auc_lo: float
    auc_hi: float
    eer: float
    eer_lo: float
    eer_hi: float
    n_videos: int
    n_boot: int
    n_valid: int  # replicates with both classes present (others are undefined and skipped)
    level: float = 0.95

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _VideoROC:
    """Pooled frame ROC statistics under per-video weights (a video drawn k times counts k).

    Built once per run, then evaluated for a whole batch of bootstrap replicates at once:

    * AUC exactly, from the video × video matrix ``C[u, v]`` = number of (anomalous frame of u,
      normal frame of v) pairs ranked correctly (ties count ½): AUC(w) = wᵀCw / (w·P)(w·N).
    * EER from per-video cumulative counts at up to ``grid`` score thresholds (all distinct
      scores when there are fewer), as min |FPR − FNR| over those thresholds.

    This keeps a replicate at O(videos²) + O(videos × thresholds) instead of a sort of all
    frames, which made 1,000 replicates of a 24,000-frame run take seconds.
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray, video_index: np.ndarray,
                 n_videos: int, grid: int = 2000) -> None:
        pos = labels == 1
        self.P = np.bincount(video_index[pos], minlength=n_videos).astype(np.float64)
        self.N = np.bincount(video_index[~pos], minlength=n_videos).astype(np.float64)
        ps, pv = scores[pos], video_index[pos]
        self.C = np.zeros((n_videos, n_videos))
        for v in range(n_videos):
            nv = np.sort(scores[~pos & (video_index == v)])
            if len(nv) == 0:
                continue
            less = np.searchsorted(nv, ps, side="left")
            leq = np.searchsorted(nv, ps, side="right")
            self.C[:, v] = np.bincount(pv, weights=less + 0.5 * (leq - less),
                                       minlength=n_videos)
        thr = np.unique(scores)[::-1]
        if len(thr) > grid:
            thr = np.quantile(scores, np.linspace(1, 0, grid), method="inverted_cdf")
            thr = np.unique(thr)[::-1]
        # TP[v, t] / FP[v, t]: anomalous / normal frames of video v scoring >= thr[t]
        self.TP = np.zeros((n_videos, len(thr)))
        self.FP = np.zeros((n_videos, len(thr)))
        for v in range(n_videos):
            sv, lv = scores[video_index == v], labels[video_index == v]
            for arr, out in ((np.sort(sv[lv == 1]), self.TP), (np.sort(sv[lv == 0]), self.FP)):
                out[v] = len(arr) - np.searchsorted(arr, thr, side="left")

    def metrics(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AUC and EER for each row of ``W`` (replicates × videos, multiplicities)."""
        wp, wn = W @ self.P, W @ self.N
        ok = (wp > 0) & (wn > 0)
        auc = np.full(len(W), np.nan)
        eer = np.full(len(W), np.nan)
        if not ok.any():
            return auc, eer
        Wk = W[ok]
        auc[ok] = ((Wk @ self.C) * Wk).sum(axis=1) / (wp[ok] * wn[ok])
        tpr = (Wk @ self.TP) / wp[ok][:, None]
        fpr = (Wk @ self.FP) / wn[ok][:, None]
        # FNR = 1 - TPR, so |FPR - FNR| = |FPR + TPR - 1|
        i = np.argmin(np.abs(fpr + tpr - 1.0), axis=1)
        rows = np.arange(len(Wk))
        eer[ok] = (fpr[rows, i] + 1.0 - tpr[rows, i]) / 2.0
        return auc, eer


def video_bootstrap(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, chunk: int = 200) -> VideoBootstrap:
    """Bootstrap CI of micro frame AUC and EER of one run, resampling videos with replacement.

    ``scores`` is a run's ``scores.parquet`` table (``video_id, score, label``; NaN scores are
    frames the protocol dropped and are left out). Each replicate draws as many videos as there
    are, with replacement, pools their frames (a video drawn twice counts twice) and recomputes
    the metrics; the interval is the percentile interval of the valid replicates (a replicate
    without anomalous or without normal frames is undefined and skipped). The point estimates
    are the run's own metrics (``protocols.roc_auc`` / ``protocols.eer``).
    """
    from occbench.harness.protocols import eer as eer_fn
    from occbench.harness.protocols import roc_auc

    d = scores[scores["score"].notna()]
    if d.empty:
        raise ValueError("no evaluated frames (all scores NaN)")
    vids, vidx = np.unique(d["video_id"].astype(str).to_numpy(), return_inverse=True)
    s = d["score"].to_numpy(np.float64)
    y = d["label"].to_numpy(np.int64)
    nv = len(vids)
    roc = _VideoROC(s, y, vidx.astype(np.int64), nv)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, nv, size=(n_boot, nv))
    res_auc, res_eer = [], []
    # the matrices are small: BLAS threads only add contention (10x slower on a busy 2-core box)
    with threadpool_limits(1, user_api="blas"):
        for a0 in range(0, n_boot, chunk):
            W = np.stack([np.bincount(r, minlength=nv)
                          for r in draws[a0:a0 + chunk]]).astype(float)
            au, ee = roc.metrics(W)
            res_auc.append(au)
            res_eer.append(ee)
    ra, re_ = np.concatenate(res_auc), np.concatenate(res_eer)
    ok = ~np.isnan(ra)
    q = (1 - level) / 2
    if ok.sum() >= 2:
        auc_lo, auc_hi = np.quantile(ra[ok], [q, 1 - q])
        eer_lo, eer_hi = np.quantile(re_[ok], [q, 1 - q])
    else:
        auc_lo = auc_hi = eer_lo = eer_hi = math.nan
    return VideoBootstrap(roc_auc(y, s), float(auc_lo), float(auc_hi), eer_fn(y, s),
                          float(eer_lo), float(eer_hi), nv, n_boot, int(ok.sum()), level)


# ----------------------------------------------------------------------------------------------
# paired comparisons with Holm correction
# ----------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order as the input; NaNs stay NaN, not counted).

    Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)); reject H_(i) at level
    alpha iff its adjusted p <= alpha. Controls the family-wise error rate without assumptions on
    the dependence between tests.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
                ) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired samples; returns (statistic, p).

    All-equal pairs give p = 1 (no evidence of a difference); zero differences are dropped
    (``zero_method="wilcox"``); scipy picks the exact distribution for small samples.
    """
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (math.nan, math.nan)
    if np.all(x == 0):
        return (0.0, 1.0)
    r = stats.wilcoxon(x, zero_method="wilcox", alternative="two-sided")
    return float(r.statistic), float(r.pvalue)


def pairwise_comparisons(units: pd.DataFrame, method: str = "method", unit: Sequence[str] = (
        "seed", "normal_class"), value: str = "auc", higher_is_better: bool = True,
        alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of methods compared over their matched units (e.g. seed × class).

    ``units`` has one row per (method, unit...) with ``value``. Returns one row per pair:
    ``a, b, n_pairs, mean_diff`` (a − b), ``wins/ties/losses`` of a, ``p`` (Wilcoxon),
    ``p_holm`` (Holm over all pairs of this table) and ``significant`` (p_holm <= alpha).
    """
    ucols = [c for c in unit if c in units.columns]
    d = units.copy()
    for c in ucols:  # None/NaN keys (video has no class) must still match each other
        d[c] = d[c].astype(object).where(d[c].notna(), "")
    wide = d.pivot_table(index=ucols, columns=method, values=value, aggfunc="mean")
    rows = []
    for a, b in itertools.combinations(sorted(wide.columns, key=str), 2):
        pair = wide[[a, b]].dropna()
        xa, xb = pair[a].to_numpy(), pair[b].to_numpy()
        diff = xa - xb if higher_is_better else xb - xa
        stat, p = paired_test(xa, xb)
        rows.append({"a": a, "b": b, "n_pairs": len(pair),
                     "mean_diff": float(np.mean(xa - xb)) if len(pair) else math.nan,
                     "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
                     "losses": int((diff < 0).sum()), "statistic": stat, "p": p})
    out = pd.DataFrame(rows, columns=["a", "b", "n_pairs", "mean_diff", "wins", "ties", "losses",
                                      "statistic", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    out["significant"] = out["p_holm"] <= alpha
    return out


# ----------------------------------------------------------------------------------------------
# ranks across datasets: Friedman, Nemenyi, rank uncertainty
# ----------------------------------------------------------------------------------------------


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the Nemenyi test for ``k`` methods (studentized range / √2)."""
    if k < 2:
        raise ValueError("the Nemenyi test needs at least two methods")
    if alpha == 0.05 and k in NEMENYI_Q05:
        return NEMENYI_Q05[k]
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: q_alpha · sqrt(k (k + 1) / (6 N))."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def rank_matrix(matrix: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Ranks within each row (block) of a blocks × methods matrix; 1 = best, ties averaged."""
    return (matrix.rank(axis=1, ascending=not higher_is_better, method="average"))


@dataclass
class FriedmanResult:
    """Average ranks (1 = best), Friedman test and Nemenyi CD over complete blocks."""

    methods: list[str]
    blocks: list[str]
    avg_rank: dict[str, float]
    statistic: float
    pvalue: float
    cd: float
    alpha: float = 0.05
    excluded_methods: list[str] = field(default_factory=list)
    excluded_blocks: list[str] = field(default_factory=list)

    def cliques(self) -> list[list[str]]:
        """Maximal groups of methods whose average ranks differ by less than the CD."""
        ms = sorted(self.methods, key=lambda m: (self.avg_rank[m], m))
        r = [self.avg_rank[m] for m in ms]
        groups: list[list[str]] = []
        for i in range(len(ms)):
            j = i
            while j + 1 < len(ms) and r[j + 1] - r[i] < self.cd:
                j += 1
            if j > i and not any(set(ms[i:j + 1]) <= set(g) for g in groups):
                groups.append(ms[i:j + 1])
        return groups


def complete_blocks(matrix: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Drop methods (columns) or blocks (rows) with missing cells until the matrix is complete.

    Greedy: repeatedly remove whichever row or column has the largest share of missing cells
    (columns first on ties, so that datasets are kept). Returns (matrix, dropped methods,
    dropped blocks).
    """
    m = matrix.copy()
    dropped_m: list[str] = []
    dropped_b: list[str] = []
    while m.size and m.isna().to_numpy().any():
        col_frac = m.isna().mean(axis=0)
        row_frac = m.isna().mean(axis=1)
        if col_frac.max() >= row_frac.max():
            c = str(col_frac.sort_values(ascending=False, kind="stable").index[0])
            dropped_m.append(c)
            m = m.drop(columns=[c])
        else:
            r = str(row_frac.sort_values(ascending=False, kind="stable").index[0])
            dropped_b.append(r)
            m = m.drop(index=[r])
    return m, sorted(dropped_m), sorted(dropped_b)


def friedman_nemenyi(matrix: pd.DataFrame, alpha: float = 0.05,
                     higher_is_better: bool = True) -> FriedmanResult | None:
    """Friedman test + Nemenyi CD on a blocks (datasets) × methods matrix of scores.

    Incomplete rows/columns are dropped first (:func:`complete_blocks`). Returns ``None`` when
    fewer than 3 methods or 2 blocks remain (``scipy.stats.friedmanchisquare`` needs 3 methods).
    """
    m, dm, db = complete_blocks(matrix)
    if m.shape[1] < 3 or m.shape[0] < 2:
        return None
    ranks = rank_matrix(m, higher_is_better)
    stat, p = stats.friedmanchisquare(*(m[c].to_numpy() for c in m.columns))
    if np.isnan(stat):  # every block ties every method: no evidence of any difference
        stat, p = 0.0, 1.0
    avg = {str(c): float(ranks[c].mean()) for c in m.columns}
    return FriedmanResult(methods=[str(c) for c in m.columns], blocks=[str(i) for i in m.index],
                          avg_rank=avg, statistic=float(stat), pvalue=float(p),
                          cd=critical_difference(m.shape[1], m.shape[0], alpha), alpha=alpha,
                          excluded_methods=dm, excluded_blocks=db)


def rank_bootstrap(seed_values: pd.DataFrame, methods: Sequence[str], blocks: Sequence[str],
                   block: str = "block", method: str = "method", value: str = "auc",
                   n_boot: int = 1000, seed: int = 0, higher_is_better: bool = True,
                   level: float = 0.95) -> pd.DataFrame:
    """Uncertainty of average ranks from a bootstrap over seeds.

    ``seed_values`` has one row per (block, method, seed) with ``value``. In each replicate every
    (block, method) cell draws its seeds with replacement and takes their mean; methods are ranked
    within each block and the ranks averaged over blocks. Returns per method: ``rank_mean``,
    ``rank_lo``, ``rank_hi`` (percentile interval of the average rank) and ``p_best`` (share of
    replicates in which it has the best average rank, ties shared).
    """
    rng = np.random.default_rng(seed)
    ms, bs = list(methods), list(blocks)
    cells: list[list[np.ndarray]] = []
    for b in bs:
        row = []
        for mth in ms:
            x = seed_values.loc[(seed_values[block] == b) & (seed_values[method] == mth), value]
            x = x.to_numpy(np.float64)
            if len(x) == 0:
                raise ValueError(f"no values for method {mth!r} on block {b!r}")
            row.append(x)
        cells.append(row)
    # mat[r, b, m]: replicate r's mean of a resample of method m's seeds on block b
    mat = np.empty((n_boot, len(bs), len(ms)))
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            mat[:, i, j] = c[rng.integers(0, len(c), size=(n_boot, len(c)))].mean(axis=1)
    ranks = stats.rankdata(-mat if higher_is_better else mat, axis=2, method="average")
    avg = ranks.mean(axis=1)
    a = (1 - level) / 2
    best = avg == avg.min(axis=1, keepdims=True)
    p_best = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
    return pd.DataFrame({"method": ms, "rank_mean": avg.mean(axis=0),
                         "rank_lo": np.quantile(avg, a, axis=0),
                         "rank_hi": np.quantile(avg, 1 - a, axis=0), "p_best": p_best})

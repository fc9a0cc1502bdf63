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

import functools
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats
from threadpoolctl import ThreadpoolController

#: Nemenyi q_alpha for alpha = 0.05 and k = 2..10 classifiers (Demšar 2006, Table 5a):
#: the studentized range statistic at infinite degrees of freedom divided by sqrt(2).
#: Larger k falls back to scipy.stats.studentized_range (the table is checked against it).
NEMENYI_Q05: dict[int, float] = {
    2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164,
}


def stable_seed(*parts: object) -> int:
    """A seed derived from strings (Python's ``hash`` is salted per process, this is not)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


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
    a, b = _t_quantiles(level, n - 1)
    # as scipy's interval(level, n - 1, loc=mean, scale=sem) computes it: ppf * scale + loc
    return (float(a * sem + mean), float(b * sem + mean))


@functools.lru_cache(maxsize=256)
def _t_quantiles(level: float, dof: int) -> tuple[float, float]:
    """The standard Student-t quantiles of a two-sided ``level`` interval: scipy's distribution
    machinery cost 0.6 ms a call, once per table cell (3,300 cells at 10,000 runs)."""
    lo, hi = stats.t.interval(level, dof)
    return float(lo), float(hi)


def summarize(df: pd.DataFrame, keys: list[str], value: str, level: float = 0.95,
              bounds: tuple[float, float] | None = (0.0, 1.0)) -> pd.DataFrame:
    """Per group of ``keys``: ``{value}_mean, _std, _n, _lo, _hi`` (t interval) of ``value``.

    ``bounds`` clips the interval to the metric's range (AUC and EER live in [0, 1]; a t interval
    of a mean near 1 can otherwise poke past it); ``None`` leaves it as scipy gives it.
    """
    rows = []
    values = pd.to_numeric(df[value], errors="coerce").to_numpy(dtype=np.float64)
    # each group's rows by position, in the frame's order (as iterating the groups gives
    # them): pandas' per-group frames were most of the board's tables at 100,000 runs
    gb = df.groupby(keys, dropna=False, sort=True)
    codes = gb.ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[order], np.arange(gb.ngroups + 1))
    for j, k in enumerate(gb.size().index):
        x = values[order[edges[j]:edges[j + 1]]]
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
      scores when there are fewer), as min |FPR − FNR| over those thresholds, found by a
      binary search per replicate (:meth:`_eer`).

    This keeps a replicate at O(videos²) + O(videos × log thresholds) instead of a sort of all
    frames, which made 1,000 replicates of a 24,000-frame run take seconds.
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray, video_index: np.ndarray,
                 n_videos: int, grid: int = 2000, order: np.ndarray | None = None) -> None:
        # one sort of all frames; every per-video, per-class list below is a sorted subsequence
        order = np.argsort(scores, kind="stable") if order is None else order
        s_sorted, y_sorted, v_sorted = scores[order], labels[order] == 1, video_index[order]
        self.P = np.bincount(video_index[labels == 1], minlength=n_videos).astype(np.float64)
        self.N = np.bincount(video_index[labels != 1], minlength=n_videos).astype(np.float64)
        ps, pv = s_sorted[y_sorted], v_sorted[y_sorted]  # anomalous frames, scores ascending
        ns, nvid = s_sorted[~y_sorted], v_sorted[~y_sorted]
        self.C = np.zeros((n_videos, n_videos))
        for v in range(n_videos):
            nv = ns[nvid == v]
            if len(nv) == 0:
                continue
            # sorted queries: searchsorted walks both arrays once instead of jumping around
            less = np.searchsorted(nv, ps, side="left")
            leq = np.searchsorted(nv, ps, side="right")
            self.C[:, v] = np.bincount(pv, weights=less + 0.5 * (leq - less),
                                       minlength=n_videos)
        distinct = np.ones(len(s_sorted), bool)
        distinct[1:] = s_sorted[1:] != s_sorted[:-1]
        thr = s_sorted[distinct][::-1]
        if len(thr) > grid:
            thr = np.quantile(s_sorted, np.linspace(1, 0, grid), method="inverted_cdf")
            thr = np.unique(thr)[::-1]
        # TP[v, t] / FP[v, t]: anomalous / normal frames of video v scoring >= thr[t]
        self.TP = np.zeros((n_videos, len(thr)))
        self.FP = np.zeros((n_videos, len(thr)))
        for v in range(n_videos):
            for arr, out in ((ps[pv == v], self.TP), (ns[nvid == v], self.FP)):
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
        eer[ok] = self._eer(Wk, wp[ok], wn[ok])
        return auc, eer

    def _rates(self, W: np.ndarray, wp: np.ndarray, wn: np.ndarray, t: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FPR, TPR and FPR + TPR − 1 of each replicate (row of ``W``) at its own threshold
        index ``t``. The counts are sums of integers (exact in float64 in any order), so these
        are the bits the full replicates × thresholds matrices would hold."""
        tp = np.einsum("rv,vr->r", W, self.TP[:, t])
        fp = np.einsum("rv,vr->r", W, self.FP[:, t])
        tpr, fpr = tp / wp, fp / wn
        return fpr, tpr, (fpr + tpr) - 1.0

    def _eer(self, W: np.ndarray, wp: np.ndarray, wn: np.ndarray) -> np.ndarray:
        """(FPR + FNR) / 2 at the first threshold of least |FPR − FNR|, for each row of ``W``.

        FNR = 1 − TPR, so |FPR − FNR| = |f| with f = FPR + TPR − 1, and f never decreases along
        the thresholds (highest first: both rates only grow). So instead of evaluating all of
        them (replicates × thresholds matrices, most of a video page's time) each replicate
        binary-searches its crossing: the first index with f ≥ 0, or, when the index before it
        is at least as close to 0, the first index of that value (``argmin`` takes the first of
        equal minima). Same index, same value, as ``argmin(|f|)`` over every threshold.
        """
        n, T = len(W), self.TP.shape[1]
        rows = np.arange(n)

        def first_at_least(value: np.ndarray, hi: np.ndarray) -> np.ndarray:
            # the first t in [0, hi) with f(t) >= value (hi where there is none)
            lo, hi = np.zeros(n, np.int64), hi.copy()
            while (todo := lo < hi).any():
                r = rows[todo]
                mid = (lo[r] + hi[r]) // 2
                up = self._rates(W[r], wp[r], wn[r], mid)[2] >= value[r]
                hi[r[up]] = mid[up]
                lo[r[~up]] = mid[~up] + 1
            return lo

        i0 = first_at_least(np.zeros(n), np.full(n, T, np.int64))
        before = np.maximum(i0 - 1, 0)
        f_before = self._rates(W, wp, wn, before)[2]
        f_at = self._rates(W, wp, wn, np.minimum(i0, T - 1))[2]
        left = (i0 > 0) & ((i0 == T) | (f_at >= -f_before))
        idx = i0.copy()
        if left.any():
            r = rows[left]
            idx[r] = first_at_least(f_before, before + 1)[r]
        fpr, tpr, _ = self._rates(W, wp, wn, idx)
        return (fpr + 1.0 - tpr) / 2.0


@functools.lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    """The process's thread pools, found once: ``threadpool_limits`` rescans every loaded
    library on each call, which cost more than the bootstrap of a small run."""
    return ThreadpoolController()


def video_bootstrap(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, chunk: int = 1000, auc: float | None = None,
                    eer: float | None = None) -> VideoBootstrap:
    """Bootstrap CI of micro frame AUC and EER of one run, resampling videos with replacement.

    ``scores`` is a run's scores table (``video_id, score, label``; NaN scores are frames the
    protocol dropped and are left out). Each replicate draws as many videos as there are, with
    replacement, pools their frames (a video drawn twice counts twice) and recomputes the
    metrics; the interval is the percentile interval of the valid replicates (a replicate
    without anomalous or without normal frames is undefined and skipped). The point estimates
    are ``auc`` / ``eer`` when given (the run's recorded metrics: the site passes them, so they
    are not computed again), else ``protocols.roc_auc`` / ``protocols.eer`` of the frames.
    """
    d = scores[scores["score"].notna()]
    if d.empty:
        raise ValueError("no evaluated frames (all scores NaN)")
    # integer codes in sorted order of the ids (as np.unique would number them, without
    # sorting 24,000 strings): the same video numbering, so the same replicates
    vidx, vids = pd.factorize(d["video_id"].astype(str), sort=True)
    return bootstrap_videos(d["score"].to_numpy(np.float64), d["label"].to_numpy(np.int64),
                            vidx.astype(np.int64), len(vids), n_boot, seed, level, chunk,
                            auc, eer)


def bootstrap_per_video(videos: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                        auc: float | None = None, eer: float | None = None,
                        order: np.ndarray | None = None) -> VideoBootstrap:
    """:func:`video_bootstrap` of a run's frames per video (video id -> (score, NaN where the
    protocol dropped the frame; label), as ``RunRead.per_video`` gives them), without a
    frame: the videos with a kept frame numbered in sorted order of their ids, as
    :func:`video_bootstrap` numbers them, so a seed draws the same replicates. ``order``:
    ``np.argsort(kept, kind="stable")`` of the kept frames' scores, concatenated in the order
    of ``videos``, when the caller has it (the sort is done once for a run page)."""
    shown = sorted(v for v, (s, _) in videos.items() if (~np.isnan(s)).any())
    number = {v: i for i, v in enumerate(shown)}
    scores, labels, index = [np.array([], np.float64)], [np.array([], np.int64)], \
        [np.array([], np.int64)]
    for v, (s, y) in videos.items():
        kept = ~np.isnan(s)
        scores.append(s[kept])
        labels.append(y[kept])
        index.append(np.full(int(kept.sum()), number.get(v, -1), np.int64))
    return bootstrap_videos(np.concatenate(scores), np.concatenate(labels),
                            np.concatenate(index), len(shown), n_boot, seed, level,
                            auc=auc, eer=eer, order=order)


def bootstrap_videos(s: np.ndarray, y: np.ndarray, video_index: np.ndarray, n_videos: int,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                     chunk: int = 1000, auc: float | None = None,
                     eer: float | None = None, order: np.ndarray | None = None
                     ) -> VideoBootstrap:
    """:func:`video_bootstrap` of arrays: the evaluated frames' scores ``s`` and labels ``y``
    (no NaN), and ``video_index``, each frame's video numbered 0..n_videos-1 in sorted order
    of the video ids (the numbering decides which videos a seed's replicates draw; the order
    of the frames does not matter). ``order``: ``np.argsort(s, kind="stable")`` if known."""
    s, y = np.asarray(s, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if not len(s):
        raise ValueError("no evaluated frames (all scores NaN)")
    nv = n_videos
    roc = _VideoROC(s, y, video_index, nv, order=order)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, nv, size=(n_boot, nv))
    res_auc, res_eer = [], []
    # the matrices are small: BLAS threads only add contention (10x slower on a busy 2-core box)
    with _threadpools().limit(limits=1, user_api="blas"):
        for a0 in range(0, n_boot, chunk):
            r = draws[a0:a0 + chunk]
            # multiplicity of each video in each replicate, all replicates of the chunk at once
            W = np.bincount((np.arange(len(r))[:, None] * nv + r).ravel(),
                            minlength=len(r) * nv).reshape(len(r), nv).astype(float)
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
    if auc is None or eer is None:
        from occbench.harness.scoring.protocols import eer as eer_fn
        from occbench.harness.scoring.protocols import roc_auc

        auc = roc_auc(y, s) if auc is None else auc
        eer = eer_fn(y, s) if eer is None else eer
    return VideoBootstrap(float(auc), float(auc_lo), float(auc_hi), float(eer),
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


def _avg_ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks along the last axis of a 2-D array (NaNs last, each NaN a group of its own)
    and the tie counts (group size at each group's first sorted position, 0 elsewhere): what
    scipy's signed-rank test computes for one sample, here for many rows at once."""
    rows, n = a.shape
    j = np.argsort(a, axis=1, kind="stable")
    y = np.take_along_axis(a, j, axis=1)
    new = np.ones((rows, n), dtype=bool)
    new[:, 1:] = y[:, :-1] != y[:, 1:]  # NaN != NaN: every NaN is a group of its own
    starts = np.flatnonzero(new.ravel())
    counts = np.diff(starts, append=rows * n)
    first = (starts % n + 1).astype(np.float64)  # ordinal rank of each group's first element
    ranks_sorted = np.repeat(first + (counts - 1) / 2.0, counts).reshape(rows, n)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, j, ranks_sorted, axis=1)
    t = np.zeros(rows * n)
    t[starts] = counts
    return ranks, t.reshape(rows, n)


@functools.lru_cache(maxsize=64)
def _wilcoxon_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cdf(k) and sf(k), k = 0..n(n+1)/2, of the exact null distribution of W+ for ``n`` pairs,
    each value summed the way scipy sums it (so p-values agree to the last bit)."""
    from scipy.stats._hypotests import _get_wilcoxon_distr

    pm = _get_wilcoxon_distr(n)
    mean = n * (n + 1) / 4
    ks = range(len(pm))
    cdf = np.array([pm[:k + 1].sum() if k <= mean else 1 - pm[k + 1:].sum() for k in ks])
    sf = np.array([pm[k:].sum() if k <= mean else 1 - pm[:k].sum() for k in ks])
    return cdf, sf


def signed_rank_rows(x: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilcoxon signed-rank test of each row of ``x`` (rows × n paired differences, no
    NaN); returns (statistic, p) per row, equal to :func:`paired_test` row by row.

    Same choices as ``scipy.stats.wilcoxon`` with its defaults (``zero_method="wilcox"``,
    ``method="auto"``): the exact null distribution without ties or zeros up to 50 pairs; with
    ties or zeros an exact permutation test over all 2^n sign patterns up to 13 pairs; the
    normal approximation with tie correction otherwise. All-zero rows give (0, 1) as
    :func:`paired_test` does. Vectorised over rows: thousands of pairs in milliseconds, where
    one scipy call costs about a millisecond.
    """
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    stat, p = np.full(rows, np.nan), np.full(rows, np.nan)
    if rows == 0 or n == 0:
        return stat, p
    zero = x == 0
    allzero = zero.all(axis=1)
    absx = np.where(zero, np.nan, np.abs(x))
    ranks, t = _avg_ranks(absx)
    r_plus = np.where(x > 0, ranks, 0.0).sum(axis=1)
    r_minus = np.where(x < 0, ranks, 0.0).sum(axis=1)
    ties = (t == 0).any(axis=1)
    has_zero = zero.any(axis=1)
    live = ~allzero
    if n > 50:
        exact = perm = np.zeros(rows, bool)
    else:
        exact = live & ~(ties | has_zero)
        perm = live & ~exact if n <= 13 else np.zeros(rows, bool)
    asym = live & ~exact & ~perm
    if exact.any():
        cdf, sf = _wilcoxon_tables(n)
        rp = r_plus[exact]
        p[exact] = np.clip(2 * np.minimum(sf[np.floor(rp).astype(np.int64)],
                                          cdf[np.ceil(rp).astype(np.int64)]), 0, 1)
    if perm.any():
        # W+ under every sign pattern (a zero stays zero whatever its sign); rank sums are
        # multiples of 1/2, so the matrix product is exact in any summation order
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
        rk = np.where(zero, 0.0, ranks)[perm]
        obs = r_plus[perm]
        gamma = np.abs(np.finfo(np.float64).eps * 100 * obs)  # scipy's tolerance
        out = np.empty(len(rk))
        for i0 in range(0, len(rk), chunk):
            null = rk[i0:i0 + chunk] @ signs.T
            o, g = obs[i0:i0 + chunk, None], gamma[i0:i0 + chunk, None]
            less = np.count_nonzero(null <= o + g, axis=1) / float(2 ** n)
            greater = np.count_nonzero(null >= o - g, axis=1) / float(2 ** n)
            out[i0:i0 + chunk] = np.clip(np.minimum(less, greater) * 2, 0, 1)
        p[perm] = out
    if asym.any():
        c = (n - zero[asym].sum(axis=1)).astype(np.float64)
        mn = c * (c + 1.0) * 0.25
        se = c * (c + 1.0) * (2.0 * c + 1.0)
        tt = t[asym]
        se = np.sqrt((se - (tt ** 3 - tt).sum(axis=1) / 2) / 24)
        z = (r_plus[asym] - mn) / se
        p[asym] = 2 * special.ndtr(-np.abs(z))
    stat[live] = np.minimum(r_plus, r_minus)[live]
    stat[allzero], p[allzero] = 0.0, 1.0
    return stat, p


#: Up to this many entries on one dataset, every pair is compared; beyond it (a sweep of
#: hundreds of configurations) each entry only against the best entry and its neighbour in the
#: ranking: what a page can show, 2 (k - 1) pairs instead of k (k - 1) / 2.
ALL_PAIRS_MAX = 30

COMPARISON_COLUMNS = ["a", "b", "n_pairs", "mean_diff", "wins", "ties", "losses", "statistic",
                      "p", "p_holm", "significant"]


def _pairs_to_compare(cols: list[Any], values: np.ndarray, higher_is_better: bool,
                      all_pairs_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Column index pairs (i < j in ``cols`` order) to compare: all of them for up to
    ``all_pairs_max`` entries, else each entry against the best and its ranking neighbour."""
    k = len(cols)
    if k <= all_pairs_max:
        ia, ib = np.triu_indices(k, 1)
        return ia, ib
    with np.errstate(all="ignore"):
        mean = np.nanmean(values, axis=0)
    key = np.where(np.isnan(mean), -np.inf, mean if higher_is_better else -mean)
    order = sorted(range(k), key=lambda i: (-key[i], str(cols[i])))  # best first
    pairs = {(min(order[0], j), max(order[0], j)) for j in order[1:]}
    pairs |= {(min(u, v), max(u, v)) for u, v in itertools.pairwise(order)}
    ia, ib = (np.array(x, dtype=np.int64) for x in zip(*sorted(pairs), strict=True))
    return ia, ib


def pairwise_comparisons(units: pd.DataFrame, method: str = "method", unit: Sequence[str] = (
        "seed", "normal_class"), value: str = "auc", higher_is_better: bool = True,
        alpha: float = 0.05, all_pairs_max: int = ALL_PAIRS_MAX) -> pd.DataFrame:
    """Pairs of methods compared over their matched units (e.g. seed × class).

    ``units`` has one row per (method, unit...) with ``value``. Returns one row per pair:
    ``a, b, n_pairs, mean_diff`` (a − b), ``wins/ties/losses`` of a, ``p`` (Wilcoxon, as
    :func:`paired_test`), ``p_holm`` (Holm over all pairs of this table) and ``significant``
    (p_holm <= alpha). ``a`` sorts before ``b`` by name. Every pair up to ``all_pairs_max``
    methods; beyond, each method against the best (highest mean ``value``) and against its
    neighbour in that ranking (:data:`ALL_PAIRS_MAX`), and Holm over those pairs.
    """
    ucols = [c for c in unit if c in units.columns]
    d = units.copy()
    for c in ucols:  # None/NaN keys (video has no class) must still match each other
        d[c] = d[c].astype(object).where(d[c].notna(), "")
    wide = d.pivot_table(index=ucols, columns=method, values=value, aggfunc="mean")
    cols = sorted(wide.columns, key=str)
    if len(cols) < 2:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    V = wide[cols].to_numpy(np.float64)  # units × methods
    ia, ib = _pairs_to_compare(cols, V, higher_is_better, all_pairs_max)
    npair = len(ia)
    n_pairs = np.zeros(npair, np.int64)
    mean_diff = np.full(npair, np.nan)
    wins, ties, losses = (np.zeros(npair, np.int64) for _ in range(3))
    stat, p = np.full(npair, np.nan), np.full(npair, np.nan)
    for i0 in range(0, npair, 4096):  # bounded memory: units × 4,096 pairs at a time
        a_, b_ = ia[i0:i0 + 4096], ib[i0:i0 + 4096]
        D = (V[:, a_] - V[:, b_]).T  # pairs × units, NaN where one side is missing
        ok = ~np.isnan(D)
        cnt = ok.sum(axis=1)
        sl = slice(i0, i0 + len(a_))
        n_pairs[sl] = cnt
        sgn = D if higher_is_better else -D
        wins[sl] = (sgn > 0).sum(axis=1)
        ties[sl] = (sgn == 0).sum(axis=1)
        losses[sl] = (sgn < 0).sum(axis=1)
        md, st_, pv = np.full(len(a_), np.nan), np.full(len(a_), np.nan), np.full(len(a_), np.nan)
        for m in np.unique(cnt[cnt > 0]):
            rows = np.flatnonzero(cnt == m)
            X = D[rows][ok[rows]].reshape(len(rows), m)  # the matched units, in unit order
            md[rows] = X.mean(axis=1)
            st_[rows], pv[rows] = signed_rank_rows(X)
        mean_diff[sl], stat[sl], p[sl] = md, st_, pv
    out = pd.DataFrame({"a": [cols[i] for i in ia], "b": [cols[i] for i in ib],
                        "n_pairs": n_pairs, "mean_diff": mean_diff, "wins": wins, "ties": ties,
                        "losses": losses, "statistic": stat, "p": p})
    out["p_holm"] = holm(out["p"].to_numpy())
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


#: Blocks up to which :func:`complete_blocks` searches every subset of them (2^12 subsets);
#: past that it drops greedily.
EXACT_BLOCKS_MAX = 12


def complete_blocks(matrix: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The largest complete part of a blocks × methods matrix: drop methods (columns) or
    blocks (rows) with missing cells. Returns (matrix, dropped methods, dropped blocks).

    With at most :data:`EXACT_BLOCKS_MAX` blocks every subset of blocks is tried, each with the
    methods complete on all of it, and the best kept: first one a Friedman test can use (at
    least 2 blocks and 3 methods), then the most cells, then the most blocks, then the first
    in the matrix's order. (A greedy drop could remove a method where removing a block would
    have left a rankable matrix: the reference board showed no ranking while three methods had
    run on two datasets.) With more blocks: greedy, removing whichever row or column has the
    largest share of missing cells (columns first on ties, so that datasets are kept).
    """
    if matrix.size and len(matrix.index) <= EXACT_BLOCKS_MAX and matrix.isna().to_numpy().any():
        have = matrix.notna().to_numpy()
        rows = list(range(len(matrix.index)))
        best: tuple[tuple[int, int, int], list[int], np.ndarray] | None = None
        for k in range(len(rows), 0, -1):
            for sub in itertools.combinations(rows, k):
                cols = have[list(sub)].all(axis=0)
                n = int(cols.sum())
                score = (int(k >= 2 and n >= 3), k * n, k)
                if best is None or score > best[0]:  # ties: the first, in the matrix's order
                    best = (score, list(sub), cols)
        assert best is not None
        _, keep_rows, keep_cols = best
        m = matrix.iloc[keep_rows, np.flatnonzero(keep_cols)]
        gone_m = [str(c) for c, k in zip(matrix.columns, keep_cols, strict=True) if not k]
        gone_b = [str(b) for i, b in enumerate(matrix.index) if i not in keep_rows]
        return m, sorted(gone_m), sorted(gone_b)
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
    # each cell's rows (in table order) found in one pass, not a comparison of the whole
    # table per cell
    where = seed_values.groupby([block, method], sort=False).indices \
        if len(seed_values) else {}
    values = seed_values[value].to_numpy(np.float64)
    for b in bs:
        row = []
        for mth in ms:
            at = where.get((b, mth))
            x = values[at] if at is not None else values[:0]
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

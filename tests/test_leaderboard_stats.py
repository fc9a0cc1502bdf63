"""Statistics of the leaderboard on cases with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from occbench.harness.scoring.protocols import eer as protocol_eer
from occbench.leaderboard.stats import (
    ALL_PAIRS_MAX,
    NEMENYI_Q05,
    _VideoROC,
    complete_blocks,
    critical_difference,
    friedman_nemenyi,
    holm,
    nemenyi_q,
    paired_test,
    pairwise_comparisons,
    rank_bootstrap,
    signed_rank_rows,
    summarize,
    t_interval,
    video_bootstrap,
)
from scipy import stats
from sklearn.metrics import roc_auc_score

# -- t interval --------------------------------------------------------------------------------


def test_t_interval_matches_scipy_and_hand_formula() -> None:
    x = np.array([0.81, 0.84, 0.79, 0.86, 0.80])
    lo, hi = t_interval(x)
    m, se = x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    ref = stats.t.interval(0.95, len(x) - 1, loc=m, scale=se)
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)
    # t_{0.975, 4} = 2.7764451
    assert hi - m == pytest.approx(2.7764451 * se, rel=1e-6)


def test_t_interval_edge_cases() -> None:
    assert all(math.isnan(v) for v in t_interval([0.9]))  # one seed: no interval
    assert t_interval([0.7, 0.7, 0.7]) == (0.7, 0.7)  # deterministic method
    assert t_interval([0.5, np.nan, 0.7]) == pytest.approx(
        stats.t.interval(0.95, 1, loc=0.6, scale=np.std([0.5, 0.7], ddof=1) / math.sqrt(2)))


def test_summarize_clips_interval_to_metric_range() -> None:
    df = pd.DataFrame({"g": ["a"] * 3, "auc": [0.999, 0.97, 1.0]})
    s = summarize(df, ["g"], "auc").iloc[0]
    assert s["auc_hi"] == 1.0 and s["auc_lo"] < s["auc_mean"]
    raw = summarize(df, ["g"], "auc", bounds=None).iloc[0]
    assert raw["auc_hi"] > 1.0  # what the clip prevents
    assert s["auc_n"] == 3 and s["auc_std"] == pytest.approx(np.std([0.999, 0.97, 1.0], ddof=1))


# -- Holm ---------------------------------------------------------------------------------------


def test_holm_hand_computed_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # step-down decision at alpha 0.05: reject the two smallest, then stop
    assert list(holm(p) <= 0.05) == [True, False, False, True]


def test_holm_caps_at_one_and_skips_nan() -> None:
    out = holm([0.01, np.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert len(holm([])) == 0


# -- paired tests -------------------------------------------------------------------------------


def test_wilcoxon_small_samples_cannot_reach_significance() -> None:
    # n = 3, all differences positive: exact two-sided p = 2 / 2^3 = 0.25
    assert paired_test([0.9, 0.8, 0.7], [0.5, 0.4, 0.3])[1] == pytest.approx(0.25)
    assert paired_test([0.5, 0.5], [0.5, 0.5]) == (0.0, 1.0)


def test_pairwise_comparisons_holm_and_matching() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        for cls in range(5):
            base = rng.normal(0.8, 0.05)
            rows += [{"method": "good", "seed": seed, "normal_class": str(cls), "auc": base + 0.05},
                     {"method": "bad", "seed": seed, "normal_class": str(cls), "auc": base - 0.05},
                     {"method": "same", "seed": seed, "normal_class": str(cls),
                      "auc": base + rng.normal(0, 0.01)}]
    rows.append({"method": "good", "seed": 9, "normal_class": "0", "auc": 0.1})  # unmatched
    df = pd.DataFrame(rows)
    c = pairwise_comparisons(df).set_index(["a", "b"])
    gb = c.loc[("bad", "good")]
    assert gb["n_pairs"] == 20 and gb["losses"] == 20 and gb["mean_diff"] == pytest.approx(-0.1)
    matched = df[df["seed"] < 9].pivot_table(index=["seed", "normal_class"], columns="method",
                                             values="auc")
    assert gb["p"] == pytest.approx(stats.wilcoxon(matched["bad"] - matched["good"]).pvalue)
    assert gb["p"] < 1e-4 and gb["significant"]
    assert c["p_holm"].to_numpy() == pytest.approx(holm(c["p"].to_numpy()))
    assert c.loc[("bad", "same"), "significant"]


def test_signed_rank_rows_equals_scipy_row_by_row() -> None:
    # every branch scipy's "auto" takes: exact (no ties/zeros, n <= 50), permutation (ties or
    # zeros, n <= 13), normal approximation (ties/zeros beyond 13, anything beyond 50)
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 6, 13, 14, 20, 50, 51, 70):
        for kind in ("plain", "ties", "zeros", "all-zero"):
            if n == 13 and kind in ("zeros", "all-zero"):
                continue  # scipy's 2^13-pattern permutation test takes seconds: once is enough
            x = rng.normal(0.3, 1.0, size=(1 if n == 13 else 3, n))
            if kind == "ties":
                x = np.round(x * 2) / 4
            elif kind == "zeros":
                x[:, : max(1, n // 3)] = 0.0
            elif kind == "all-zero":
                x[-1] = 0.0
            stat, p = signed_rank_rows(x)
            for i in range(len(x)):
                ref = paired_test(x[i], np.zeros(n))
                assert (stat[i], p[i]) == ref, (n, kind, i)


def _pairwise_reference(df: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Today's loop: one scipy test per pair (what the vectorised version must reproduce)."""
    wide = df.pivot_table(index=["seed", "normal_class"], columns="method", values="auc")
    rows = []
    for a, b in pairs:
        pair = wide[[a, b]].dropna()
        stat, p = paired_test(pair[a].to_numpy(), pair[b].to_numpy())
        rows.append({"a": a, "b": b, "n_pairs": len(pair), "statistic": stat, "p": p,
                     "wins": int((pair[a] > pair[b]).sum())})
    return pd.DataFrame(rows).set_index(["a", "b"])


def _many_entries(k: int, seeds: int = 3, classes: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(k)
    rows = []
    for j in range(k):
        for s in range(seeds):
            for c in range(classes):
                if rng.random() < 0.05:  # some units missing: pairs of different sizes
                    continue
                auc = round(0.6 + 0.3 * j / k + rng.normal(0, 0.03), 2)  # rounded: ties
                rows.append({"method": f"m{j:03d}", "seed": s, "normal_class": str(c),
                             "auc": auc})
    return pd.DataFrame(rows)


def test_pairwise_comparisons_all_pairs_same_p_as_one_test_per_pair() -> None:
    df = _many_entries(7)
    c = pairwise_comparisons(df).set_index(["a", "b"])
    names = sorted(df["method"].unique())
    assert len(c) == 7 * 6 // 2
    ref = _pairwise_reference(df, [(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
    for col in ("n_pairs", "statistic", "p", "wins"):
        np.testing.assert_array_equal(c.loc[ref.index, col].to_numpy(), ref[col].to_numpy())
    assert c["p_holm"].to_numpy() == pytest.approx(holm(c["p"].to_numpy()))


def test_pairwise_comparisons_many_entries_best_and_neighbours() -> None:
    k = ALL_PAIRS_MAX + 15
    df = _many_entries(k)
    c = pairwise_comparisons(df)
    means = df.groupby("method")["auc"].mean()
    order = sorted(means.index, key=lambda m: (-means[m], m))
    want = {tuple(sorted((order[0], m))) for m in order[1:]}
    want |= {tuple(sorted(p)) for p in itertools.pairwise(order)}
    got = set(zip(c["a"], c["b"], strict=True))
    assert got == want and len(c) <= 2 * (k - 1)  # not k (k - 1) / 2
    assert all(a < b for a, b in got)  # the same orientation as the all-pairs table
    ref = _pairwise_reference(df, sorted(got)[::6])  # a sample: scipy is slow here
    ci = c.set_index(["a", "b"]).loc[ref.index]
    np.testing.assert_array_equal(ci["p"].to_numpy(), ref["p"].to_numpy())
    np.testing.assert_array_equal(ci["statistic"].to_numpy(), ref["statistic"].to_numpy())
    assert c["p_holm"].to_numpy() == pytest.approx(holm(c["p"].to_numpy()))


# -- Friedman / Nemenyi -------------------------------------------------------------------------


def test_friedman_known_example() -> None:
    # 4 datasets, methods always ranked a < b < c: chi2 = 12N/(k(k+1)) sum R^2 - 3N(k+1) = 8
    m = pd.DataFrame({"a": [0.9, 0.8, 0.95, 0.7], "b": [0.8, 0.7, 0.9, 0.6],
                      "c": [0.7, 0.6, 0.5, 0.5]}, index=["d1", "d2", "d3", "d4"])
    fr = friedman_nemenyi(m)
    assert fr is not None
    assert fr.avg_rank == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert fr.statistic == pytest.approx(8.0)
    assert fr.pvalue == pytest.approx(math.exp(-4))  # chi2 with 2 df: sf(x) = exp(-x/2)
    assert fr.cd == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)))
    assert fr.cliques() == [["a", "b"], ["b", "c"]]  # 1 < CD = 1.657 < 2


def test_friedman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(3)
    m = pd.DataFrame(rng.random((6, 4)).round(1), columns=list("wxyz"))
    fr = friedman_nemenyi(m)
    ref = stats.friedmanchisquare(*(m[c] for c in m.columns))
    assert fr is not None and fr.statistic == pytest.approx(ref.statistic)
    assert fr.pvalue == pytest.approx(ref.pvalue)


def test_nemenyi_table_agrees_with_studentized_range() -> None:
    for k, q in NEMENYI_Q05.items():
        assert stats.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2) == pytest.approx(
            q, abs=2e-3)
    assert nemenyi_q(12) == pytest.approx(3.268, abs=2e-3)  # Demšar's table, k = 12 (beyond ours)
    assert critical_difference(5, 10) == pytest.approx(2.728 * math.sqrt(5 * 6 / 60))


def test_complete_blocks_and_too_few_methods() -> None:
    m = pd.DataFrame({"a": [0.9, 0.8, 0.7], "b": [0.8, np.nan, np.nan], "c": [0.7, 0.6, 0.5],
                      "d": [0.6, 0.5, 0.4]}, index=["x", "y", "z"])
    full, dm, db = complete_blocks(m)
    assert dm == ["b"] and db == [] and list(full.columns) == ["a", "c", "d"]
    assert friedman_nemenyi(m[["a", "c"]]) is None  # needs 3 methods


def test_complete_blocks_keeps_a_rankable_matrix_where_a_greedy_drop_loses_it() -> None:
    """Three methods ran on two datasets: a ranking exists. Dropping the sparsest row or column
    first (greedy, columns on ties) ends with 2 methods × 3 datasets, which cannot be ranked."""
    from occbench.leaderboard import stats as stats_mod

    nan = np.nan
    m = pd.DataFrame({"A": [0.9, 0.8, 0.7], "B": [nan, 0.7, nan], "C": [nan, 0.6, 0.5],
                      "D": [nan, 0.5, nan], "E": [0.6, 0.4, 0.3]}, index=["d0", "d1", "d2"])
    full, dm, db = complete_blocks(m)
    assert list(full.index) == ["d1", "d2"] and list(full.columns) == ["A", "C", "E"]
    assert dm == ["B", "D"] and db == ["d0"]
    fr = friedman_nemenyi(m)
    assert fr is not None and fr.methods == ["A", "C", "E"] and fr.blocks == ["d1", "d2"]
    greedy = pytest.MonkeyPatch.context()
    with greedy as mp:  # the greedy drop (used past EXACT_BLOCKS_MAX blocks) loses it
        mp.setattr(stats_mod, "EXACT_BLOCKS_MAX", 0)
        assert complete_blocks(m)[0].shape == (3, 2) and friedman_nemenyi(m) is None


def test_rank_bootstrap_reflects_seed_overlap() -> None:
    rows = []
    for b in ("d1", "d2"):
        for s in range(5):
            rows += [{"block": b, "method": "top", "seed": s, "auc": 0.99},
                     {"block": b, "method": "x", "seed": s, "auc": 0.80 + 0.02 * s},
                     {"block": b, "method": "y", "seed": s, "auc": 0.81 + 0.02 * s}]
    r = rank_bootstrap(pd.DataFrame(rows), ["top", "x", "y"], ["d1", "d2"], n_boot=400,
                       seed=1).set_index("method")
    assert r.loc["top", "p_best"] == 1.0 and r.loc["top", "rank_hi"] == 1.0
    assert r.loc["x", "rank_lo"] < r.loc["x", "rank_hi"]  # overlapping seeds: ranks uncertain
    assert 2.0 <= r.loc["y", "rank_mean"] <= r.loc["x", "rank_mean"] <= 3.0
    again = rank_bootstrap(pd.DataFrame(rows), ["top", "x", "y"], ["d1", "d2"], n_boot=400,
                           seed=1).set_index("method")
    pd.testing.assert_frame_equal(r, again)


def test_rank_bootstrap_equals_a_cell_by_cell_reference_on_shuffled_rows() -> None:
    """The cells found in one grouping pass give what selecting each cell's rows (in table
    order) gave: bit for bit, rows shuffled, other methods and blocks in the table."""
    rng = np.random.default_rng(3)
    rows = [{"block": f"d{b}", "method": f"m{m}", "seed": s, "auc": float(rng.random())}
            for b in range(3) for m in range(5) for s in range(4 + m % 2)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    ms, bs = ["m3", "m0", "m1"], ["d2", "d0"]
    got = rank_bootstrap(df, ms, bs, n_boot=300, seed=5)
    r = np.random.default_rng(5)
    mat = np.empty((300, len(bs), len(ms)))
    for i, b in enumerate(bs):
        for j, m in enumerate(ms):
            x = df.loc[(df["block"] == b) & (df["method"] == m), "auc"].to_numpy(np.float64)
            mat[:, i, j] = x[r.integers(0, len(x), size=(300, len(x)))].mean(axis=1)
    avg = stats.rankdata(-mat, axis=2, method="average").mean(axis=1)
    assert np.array_equal(got["rank_mean"].to_numpy(), avg.mean(axis=0))
    assert np.array_equal(got["rank_lo"].to_numpy(), np.quantile(avg, 0.025, axis=0))
    with pytest.raises(ValueError, match="no values for method 'nope'"):
        rank_bootstrap(df, ["m0", "nope"], bs, n_boot=10)


# -- bootstrap over videos ----------------------------------------------------------------------


def _videos(rng: np.random.Generator, n_videos: int, frames: int, d: float,
            offset_sd: float = 0.0) -> pd.DataFrame:
    parts = []
    for v in range(n_videos):
        y = np.zeros(frames, np.int8)
        a = int(rng.integers(0, frames // 2))
        y[a:a + frames // 3] = 1
        s = rng.standard_normal(frames) + d * y + rng.normal(0, offset_sd)
        parts.append(pd.DataFrame({"video_id": f"v{v:02d}", "frame": np.arange(frames),
                                   "score": s, "label": y}))
    return pd.concat(parts, ignore_index=True)


def test_video_roc_equals_sklearn_with_weights() -> None:
    rng = np.random.default_rng(5)
    d = _videos(rng, 6, 120, 1.0)
    d.loc[d.index[::7], "score"] = d["score"].round(1)  # ties
    vid = np.unique(d["video_id"], return_inverse=True)[1]
    roc = _VideoROC(d["score"].to_numpy(), d["label"].to_numpy(), vid, 6)
    W = rng.integers(0, 3, size=(5, 6)).astype(float)
    W[0] = 1
    auc, eer = roc.metrics(W)
    for i in range(5):
        w = W[i][vid]
        ref = roc_auc_score(d["label"], d["score"], sample_weight=w)
        assert auc[i] == pytest.approx(ref, abs=1e-12)
    # unweighted EER: min |FPR - FNR| over all thresholds; sklearn's drops collinear points
    assert eer[0] == pytest.approx(protocol_eer(d["label"].to_numpy(), d["score"].to_numpy()),
                                   abs=2 / len(d))


def test_video_bootstrap_point_estimates_and_determinism() -> None:
    d = _videos(np.random.default_rng(0), 10, 100, 1.0)
    d.loc[d["frame"] < 3, "score"] = np.nan  # frames dropped by the protocol are left out
    b = video_bootstrap(d, n_boot=300, seed=4)
    ok = d[d["score"].notna()]
    assert b.auc == pytest.approx(roc_auc_score(ok["label"], ok["score"]))
    assert b.auc_lo < b.auc < b.auc_hi and b.eer_lo < b.eer < b.eer_hi
    assert b.n_videos == 10 and b.n_valid == 300
    assert b == video_bootstrap(d, n_boot=300, seed=4)
    assert b != video_bootstrap(d, n_boot=300, seed=5)


def test_video_bootstrap_contains_true_auc() -> None:
    # normal ~ N(0,1), anomalous ~ N(d,1): true AUC = Phi(d / sqrt 2)
    d = 1.0
    truth = stats.norm.cdf(d / math.sqrt(2))
    b = video_bootstrap(_videos(np.random.default_rng(11), 20, 150, d), n_boot=500, seed=0)
    assert b.auc_lo <= truth <= b.auc_hi


def test_video_bootstrap_coverage_with_correlated_frames() -> None:
    # a per-video offset makes frames of a video correlated; the video bootstrap must still
    # cover the expected pooled AUC about 95 % of the time (frame resampling would not)
    d, sd, hits, reps = 1.0, 0.7, 0, 30
    for r in range(reps):
        data = _videos(np.random.default_rng(100 + r), 12, 80, d, offset_sd=sd)
        pos = data.groupby("video_id")["label"].sum()
        neg = data.groupby("video_id")["label"].count() - pos
        same = float((pos * neg).sum()) / (pos.sum() * neg.sum())  # same-video pair share
        truth = (same * stats.norm.cdf(d / math.sqrt(2))
                 + (1 - same) * stats.norm.cdf(d / math.sqrt(2 + 2 * sd ** 2)))
        b = video_bootstrap(data, n_boot=300, seed=r)
        hits += b.auc_lo <= truth <= b.auc_hi
    assert hits / reps >= 0.8


def test_video_bootstrap_needs_scores() -> None:
    d = pd.DataFrame({"video_id": ["a"], "frame": [0], "score": [np.nan], "label": [1]})
    with pytest.raises(ValueError, match="no evaluated frames"):
        video_bootstrap(d)


def _eer_every_threshold(roc: _VideoROC, W: np.ndarray) -> np.ndarray:
    """The EER of each replicate from the full replicates × thresholds matrices (what
    ``_VideoROC`` computed before it binary-searched the crossing)."""
    wp, wn = W @ roc.P, W @ roc.N
    tpr = (W @ roc.TP) / wp[:, None]
    fpr = (W @ roc.FP) / wn[:, None]
    i = np.argmin(np.abs(fpr + tpr - 1.0), axis=1)
    rows = np.arange(len(W))
    return (fpr[rows, i] + 1.0 - tpr[rows, i]) / 2.0


def test_video_roc_eer_search_equals_every_threshold_bit_for_bit() -> None:
    # discrete scores make plateaus and exact ties of |FPR - FNR| on both sides of the
    # crossing: argmin takes the first of equal minima, and so must the search
    rng = np.random.default_rng(3)
    for trial in range(200):
        nv, frames = int(rng.integers(1, 9)), int(rng.integers(1, 50))
        vid = np.repeat(np.arange(nv), frames)
        s = (rng.integers(0, int(rng.integers(1, 6)), nv * frames).astype(float)
             if trial % 2 else rng.standard_normal(nv * frames))
        y = (rng.random(nv * frames) < rng.random()).astype(np.int64)
        roc = _VideoROC(s, y, vid, nv, grid=int(rng.choice([2000, 5, 2])))
        W = rng.integers(0, 3, size=(40, nv)).astype(float)
        W = W[(W @ roc.P > 0) & (W @ roc.N > 0)]
        if not len(W):
            continue
        _, eer = roc.metrics(W)
        assert np.array_equal(eer, _eer_every_threshold(roc, W)), trial

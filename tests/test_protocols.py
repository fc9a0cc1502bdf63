"""Metrics and protocols against hand-computed cases and scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from occbench.harness.scoring.protocols import (
    ProtocolError,
    eer,
    frame_metrics,
    get_protocol,
    roc_auc,
)
from sklearn.metrics import roc_auc_score, roc_curve


def test_auc_hand_computed() -> None:
    # 2 normals (0.1, 0.4), 2 anomalies (0.35, 0.8): pairs won 3 of 4 -> 0.75
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    # ties count one half
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_eer_hand_computed() -> None:
    # perfectly separated -> 0; perfectly inverted -> 1
    assert eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert eer(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    # one of two on each side misordered: FPR = FNR = 0.5 at the crossing
    assert eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.5, 0.9])) == 0.5


def reference_eer(y: np.ndarray, s: np.ndarray) -> float:
    """Independent EER (no scikit-learn): the ROC at every distinct threshold by counting,
    then FPR = FNR found on the segment where FPR − FNR changes sign, interpolated."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=float)
    pts = [(0.0, 0.0)]  # (fpr, fnr) walking thresholds from +inf down
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        pts.append(((pred & ~y).sum() / (~y).sum(), (~pred & y).sum() / y.sum()))
    pts[0] = (0.0, 1.0)
    for (f0, n0), (f1, n1) in itertools.pairwise(pts):
        d0, d1 = f0 - n0, f1 - n1
        if d0 <= 0 <= d1:
            if d1 == d0:
                return f0
            t = -d0 / (d1 - d0)
            return f0 + t * (f1 - f0)
    raise AssertionError("no crossing")


def test_eer_on_the_full_roc_not_the_thinned_one() -> None:
    # the case: sklearn's drop_intermediate removes the collinear point FPR = FNR = 0.5
    y, s = np.array([0, 1, 1, 1, 1, 0]), np.array([6, 5, 4, 3, 2, 1.0])
    assert eer(y, s) == 0.5
    fpr, tpr, _ = roc_curve(y, s)  # the thinned ROC: argmin |FPR - FNR| is 0.75 there
    i = np.argmin(np.abs(fpr - (1 - tpr)))
    assert (fpr[i] + 1 - tpr[i]) / 2 == 0.75


def test_eer_ties_and_constant_scores() -> None:
    # all scores tied: the ROC is the diagonal, FPR = FNR = 0.5
    assert eer(np.array([0, 1, 0, 1, 1]), np.zeros(5)) == 0.5
    # a tie between one normal and one anomaly in the middle: the crossing is on the tie's
    # diagonal segment, interpolated
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.5, 0.5, 0.8, 0.9])
    assert eer(y, s) == pytest.approx(reference_eer(y, s)) == pytest.approx(1 / 6)


@pytest.mark.parametrize("seed", range(20))
def test_against_independent_code_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if seed % 3 == 0:  # many ties
        s = np.round(s, 0)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    e = eer(y, s)
    assert e == pytest.approx(reference_eer(y, s), abs=1e-12)
    assert 0.0 <= e <= 1.0


def test_micro_pools_frames_and_macro_excludes_single_class_videos() -> None:
    labels = {"a": np.array([0, 0, 1, 1]), "b": np.array([1, 1, 1]), "c": np.array([0, 1])}
    scores = {"a": np.array([0.1, 0.2, 0.3, 0.4]), "b": np.array([0.0, 0.9, 0.9]),
              "c": np.array([0.9, 0.1])}
    m = frame_metrics(scores, labels)
    y = np.concatenate(list(labels.values()))
    s = np.concatenate(list(scores.values()))
    assert m["auc_micro"] == pytest.approx(roc_auc_score(y, s))
    assert m["excluded_videos"] == ["b"]
    assert m["per_video_auc"] == {"a": 1.0, "c": 0.0}
    assert m["auc_macro"] == 0.5
    assert m["n_items"] == 9 and m["n_anomalous"] == 6


def test_minmax_equals_one_minus_normalised_psnr() -> None:
    psnr = np.array([30.0, 25.0, 35.0, 20.0])
    p = get_protocol("video-minmax@2")
    s, _ = p.process({"v": -psnr}, {"v": np.array([0, 1, 0, 1])})
    expected = 1 - (psnr - psnr.min()) / (psnr.max() - psnr.min())
    np.testing.assert_allclose(s["v"], expected)


def test_border_drop_matches_lntra_trim_and_nearest_fills() -> None:
    raw = np.r_[np.full(8, np.nan), np.arange(10.0), np.full(7, np.nan)]
    lab = np.r_[np.zeros(12), np.ones(13)].astype(int)
    s, y = get_protocol("video-raw@2").process({"v": raw}, {"v": lab})
    np.testing.assert_array_equal(y["v"], lab[8:len(lab) - 7])  # labels[8:len-7]
    np.testing.assert_array_equal(s["v"], np.arange(10.0))
    s2, _ = get_protocol("video-minmax-nearest@2").process({"v": raw}, {"v": lab})
    assert len(s2["v"]) == 25 and s2["v"][0] == 0.0 and s2["v"][-1] == 1.0


def test_protocol_errors_are_clear() -> None:
    p = get_protocol("video-minmax")  # bare name -> latest version
    assert p.id == "video-minmax@2"
    with pytest.raises(ProtocolError, match="3 scores for 2 labels"):
        p.process({"v": np.zeros(3)}, {"v": np.zeros(2)})
    with pytest.raises(ProtocolError, match="all NaN"):
        p.process({"v": np.full(3, np.nan)}, {"v": np.zeros(3)})
    with pytest.raises(ProtocolError, match="unknown protocol"):
        get_protocol("nope@3")
    with pytest.raises(ProtocolError, match=r"retired: its EER.*use video-minmax@2"):
        get_protocol("video-minmax@1")
    with pytest.raises(ProtocolError, match="same label"):
        roc_auc(np.ones(3), np.arange(3.0))


def test_evaluate_records_protocol_id() -> None:
    m = get_protocol("image@2").evaluate({"": np.array([0.1, 0.9])}, {"": np.array([0, 1])})
    assert m == {"auc": 1.0, "eer": 0.0, "n_items": 2, "n_anomalous": 1, "protocol": "image@2"}

"""Named, versioned scoring protocols and the metrics they produce.

A protocol turns a method's raw per-item scores into the scores that are evaluated, and states
every choice that changes the number (see ``shared/notes``-style conventions in
``docs/protocols.md``):

* ``normalize``: ``"none"`` or ``"minmax"`` — per-video min-max normalisation of the raw score
  (LNTRA eq. 10: with raw score = −PSNR this is exactly ``1 − normalised PSNR``). It looks at the
  whole test video (not causal).
* ``border``: what happens to frames a clip-based method could not score (NaN raw scores at the
  start/end of a video): ``"drop"`` removes those frames and their labels (the LNTRA release's
  ``labels[8:len-7]``), ``"nearest"`` fills them with the nearest scored frame of the same video.
* ``smooth_sigma``: optional Gaussian temporal smoothing (frames), 0 = off.

Metrics (scikit-learn's ROC arithmetic, without its per-call input checks):

* ``auc_micro`` — all evaluated frames of all test videos pooled into one ROC (the papers'
  "frame-level AUC"); for images the AUROC of the one-vs-rest job (``auc``).
* ``auc_macro`` — mean of per-video AUCs; videos with a single class are listed in
  ``excluded_videos`` and left out, never padded.
* ``eer`` — the equal error rate: where FPR = FNR on the *full* ROC (every threshold,
  ``drop_intermediate=False``), linearly interpolated between the two ROC points where
  FPR − FNR changes sign. (Version 1 of every protocol took ``argmin |FPR − FNR|`` over
  scikit-learn's thinned ROC, which drops exactly the collinear points where FPR = FNR lies;
  it is retired.)

Every protocol has a :attr:`Protocol.digest` over its definition and :data:`METRICS_VERSION`;
a stored metric whose digest differs is stale and is recomputed (``occbench store rescore``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

#: Version of the metric code (AUC, EER, macro rules). Bump it when a metric's computation
#: changes; it is part of every protocol's digest, so stored metrics become stale.
METRICS_VERSION = 2

#: Protocol versions that were retired, with why (``get_protocol`` names the replacement).
RETIRED = {
    1: "its EER was taken on scikit-learn's thinned ROC (wrong where FPR = FNR lies on a "
       "dropped point)",
}


class ProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class Protocol:
    """A scoring protocol; ``id`` (``name@version``) is recorded with every metric."""

    name: str
    version: int
    modality: Literal["image", "video"]
    normalize: Literal["none", "minmax"] = "none"
    border: Literal["drop", "nearest"] = "drop"
    smooth_sigma: float = 0.0
    description: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def describe(self) -> dict[str, Any]:
        return dict(self._description)

    @cached_property
    def _description(self) -> dict[str, Any]:
        # once per protocol (frozen: it cannot change): a board asks for it once per run
        d = asdict(self)
        d["id"] = self.id
        return d

    @property
    def digest(self) -> str:
        """Hash of the definition and the metric code version: what stored metrics depend on.
        (Computed once per protocol object and metric code version: a board checks it once
        per run.)"""
        hit = self.__dict__.get("_digest")
        if hit is not None and hit[0] == METRICS_VERSION:
            return str(hit[1])
        d = {k: v for k, v in asdict(self).items() if k != "description"}
        d["metrics_version"] = METRICS_VERSION
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        object.__setattr__(self, "_digest", (METRICS_VERSION, digest))  # frozen: a cache only
        return digest

    # -- score post-processing -----------------------------------------------------------------
    def process(
        self, raw: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Apply the protocol: returns (evaluated scores, matching labels) per video.

        ``raw[v]`` and ``labels[v]`` must have equal length; NaN raw scores are border frames.
        """
        out_s: dict[str, np.ndarray] = {}
        out_l: dict[str, np.ndarray] = {}
        for vid, lab in labels.items():
            if vid not in raw:
                raise ProtocolError(f"no scores for video {vid!r}")
            s = np.asarray(raw[vid], dtype=np.float64)
            y = np.asarray(lab).astype(np.int8)
            if s.shape != y.shape:
                raise ProtocolError(
                    f"video {vid!r}: {s.shape[0]} scores for {y.shape[0]} labels"
                )
            if np.isinf(s).any():
                raise ProtocolError(f"video {vid!r}: infinite scores")
            valid = ~np.isnan(s)
            if not valid.any():
                raise ProtocolError(f"video {vid!r}: no frame was scored (all NaN)")
            if self.modality == "image" and not valid.all():
                raise ProtocolError("image scores contain NaN")
            if self.border == "nearest" and not valid.all():
                idx = np.arange(len(s))
                nearest = np.interp(idx, idx[valid], idx[valid]).round().astype(int)
                # np.interp clamps at the ends, so leading/trailing NaNs take the first/last score
                s = s[nearest]
                valid = np.ones_like(valid)
            s, y = s[valid], y[valid]
            if self.smooth_sigma > 0 and len(s) > 1:
                from scipy.ndimage import gaussian_filter1d

                s = gaussian_filter1d(s, self.smooth_sigma, mode="nearest")
            if self.normalize == "minmax":
                lo, hi = float(s.min()), float(s.max())
                s = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
            out_s[vid] = s
            out_l[vid] = y
        return out_s, out_l

    def evaluate(
        self, raw: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
        processed: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
    ) -> dict[str, Any]:
        """Metrics of one run under this protocol. ``processed``: ``self.process(raw,
        labels)`` when the caller computed it already (it is not computed again)."""
        scores, labs = self.process(raw, labels) if processed is None else processed
        if self.modality == "image":
            y, s = labs[""], scores[""]
            auc, err = auc_and_eer(y, s)
            m: dict[str, Any] = {"auc": auc, "eer": err}
            m.update(n_items=len(y), n_anomalous=int(y.sum()))
        else:
            m = frame_metrics(scores, labs)
        m["protocol"] = self.id
        return m


def _roc_counts(labels: np.ndarray, scores: np.ndarray, order: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive counts (float64) at each distinct score, from the highest down:
    scikit-learn's ``confusion_matrix_at_thresholds`` without its input checks. ``order``:
    ``np.argsort(scores, kind="stable")`` when the caller has it (a run page sorts its
    frames once, for this and for the bootstrap).

    The driver already guarantees what those checks test (1-D, equal lengths, finite scores,
    two classes; :meth:`Protocol.process`), and on a 719-item job they cost 5.9 ms of the
    driver's time, more than everything else it does. The arithmetic is scikit-learn's, step
    for step (same float64 cumulative sum, same threshold positions), so AUC and EER are
    bit-identical to it (``tests/test_driver_scale.py`` checks). Like scikit-learn, the
    larger of the two label values is the anomalous (positive) class.
    """
    y = np.asarray(labels)
    sc = np.asarray(scores)
    if y.ndim != 1 or sc.shape != y.shape:
        raise ProtocolError(f"{sc.shape} scores for {y.shape} labels (1-D, equal lengths)")
    if not np.isfinite(sc).all():
        raise ProtocolError("scores contain NaN or infinite values")
    classes = np.unique(y)
    if len(classes) != 2:
        raise ProtocolError("AUC/EER is undefined when all items have the same label"
                            if len(classes) < 2 else
                            f"labels must be binary, got values {classes[:5].tolist()}")
    # descending by score; the order within ties does not matter (only each tie group's end
    # is kept, and sums of 0/1 are exact)
    order = (np.argsort(sc, kind="stable") if order is None else np.asarray(order))[::-1]
    sc = sc[order]
    pos = (y[order] == classes[1]).astype(np.float64)
    ends = np.concatenate([np.nonzero(np.diff(sc))[0], [len(sc) - 1]])
    tps = np.cumsum(pos, dtype=np.float64)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    return fps, tps


def roc_points(labels: np.ndarray, scores: np.ndarray,
               counts: tuple[np.ndarray, np.ndarray] | None = None,
               order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ROC's corners ``(fpr, tpr)``, fractions from (0, 0) to (1, 1) (1 = anomalous,
    higher score = more anomalous): ``sklearn.metrics.roc_curve``'s first two outputs with its
    default ``drop_intermediate=True``, bit for bit, without its input checks. ``counts``:
    ``_roc_counts(labels, scores)`` when the caller has them; ``order``: the scores' stable
    ascending argsort, when the caller has it."""
    fps, tps = _roc_counts(labels, scores, order) if counts is None else counts
    if len(fps) > 2:  # roc_curve's drop_intermediate=True: corners only, as roc_auc_score
        keep = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)),
                               [True]])
        fps, tps = fps[keep], tps[keep]
    fps = np.concatenate([[0.0], fps])
    tps = np.concatenate([[0.0], tps])
    return fps / fps[-1], tps / tps[-1]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, a fraction in [0, 1] (labels 1 = anomalous, higher score =
    more anomalous); equal to ``sklearn.metrics.roc_auc_score`` bit for bit."""
    from scipy.integrate import trapezoid  # what scikit-learn's auc() integrates with

    fpr, tpr = roc_points(labels, scores)
    return float(trapezoid(tpr, fpr))


def auc_and_eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``(roc_auc(labels, scores), eer(labels, scores))``, bit for bit, from one sort of the
    scores instead of two (the sort is most of either's cost)."""
    from scipy.integrate import trapezoid

    counts = _roc_counts(labels, scores)
    fpr, tpr = roc_points(labels, scores, counts)
    return float(trapezoid(tpr, fpr)), _eer_from_counts(*counts)


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """Equal error rate (a fraction in [0, 1], lower is better; 1 = anomalous, higher score =
    more anomalous): where FPR = FNR on the full ROC, interpolated linearly.

    The ROC is taken at every threshold (as ``roc_curve(drop_intermediate=False)``: the
    default thinning drops collinear points, and the crossing often lies on one). FPR − FNR
    never decreases along the curve; the EER is at its sign change, on the straight segment
    between the two ROC points around it (tied scores are one such segment, so ties are
    handled as the ROC draws them).
    """
    return _eer_from_counts(*_roc_counts(labels, scores))


def _eer_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    fpr = np.concatenate([[0.0], fps]) / fps[-1]
    tpr = np.concatenate([[0.0], tps]) / tps[-1]
    fnr = 1.0 - tpr
    d = fpr - fnr  # starts at -1 (0, 0) and ends at +1 (1, 1)
    i = int(np.argmax(d >= 0.0))  # first point at or past the crossing
    if d[i] == 0.0 or i == 0:
        return float(fpr[i])
    t = -d[i - 1] / (d[i] - d[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def frame_metrics(
    scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Micro AUC, macro AUC (single-class videos excluded and listed), EER, counts."""
    vids = list(labels)
    y = np.concatenate([np.asarray(labels[v]) for v in vids])
    s = np.concatenate([np.asarray(scores[v], dtype=np.float64) for v in vids])
    per_video: dict[str, float] = {}
    excluded: list[str] = []
    for v in vids:
        if len(np.unique(labels[v])) < 2:
            excluded.append(v)
        else:
            per_video[v] = roc_auc(labels[v], scores[v])
    auc, err = auc_and_eer(y, s)
    return {
        "auc_micro": auc,
        "auc_macro": float(np.mean(list(per_video.values()))) if per_video else None,
        "eer": err,
        "per_video_auc": per_video,
        "excluded_videos": excluded,
        "n_videos": len(vids),
        "n_items": len(y),
        "n_anomalous": int(y.sum()),
    }


_PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(p: Protocol) -> Protocol:
    if p.id in _PROTOCOLS and _PROTOCOLS[p.id] != p:
        raise ProtocolError(f"protocol {p.id} is already defined differently; bump its version")
    _PROTOCOLS[p.id] = p
    return p


for _p in (
    Protocol("image", 2, "image", description="One-vs-rest AUROC and EER of the raw scores."),
    Protocol(
        "video-raw", 2, "video", "none", "drop",
        description="Raw scores pooled over all frames; unscorable border frames dropped.",
    ),
    Protocol(
        "video-minmax", 2, "video", "minmax", "drop",
        description=(
            "Per-video min-max normalisation (LNTRA eq. 10), border frames dropped as in the "
            "LNTRA release (labels[8:len-7] for 16-frame clips)."
        ),
    ),
    Protocol(
        "video-minmax-nearest", 2, "video", "minmax", "nearest",
        description="Per-video min-max normalisation; border frames take the nearest score.",
    ),
    Protocol(
        "video-minmax-smooth15", 2, "video", "minmax", "drop", 15.0,
        description="Gaussian smoothing (sigma 15 frames) then per-video min-max; borders dropped.",
    ),
):
    register_protocol(_p)

DEFAULT_PROTOCOL = {"image": "image@2", "video": "video-minmax@2"}


def get_protocol(pid: str) -> Protocol:
    """Look a protocol up by ``name@version`` (or bare ``name``, meaning the latest version)."""
    if pid in _PROTOCOLS:
        return _PROTOCOLS[pid]
    name, _, ver = pid.partition("@")
    if ver.isdigit() and int(ver) in RETIRED and any(p.name == name for p in _PROTOCOLS.values()):
        latest = max((p for p in _PROTOCOLS.values() if p.name == name), key=lambda p: p.version)
        raise ProtocolError(f"protocol {pid} was retired: {RETIRED[int(ver)]}; use {latest.id} "
                            f"(`occbench store rescore --protocol {latest.id}` re-evaluates "
                            "stored runs without retraining)")
    versions = [p for p in _PROTOCOLS.values() if p.name == pid]
    if versions:
        return max(versions, key=lambda p: p.version)
    known = ", ".join(sorted(_PROTOCOLS))
    raise ProtocolError(f"unknown protocol {pid!r} (known: {known})")


def protocols() -> list[Protocol]:
    return [_PROTOCOLS[k] for k in sorted(_PROTOCOLS)]

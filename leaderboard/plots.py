"""Plotly figures of the site, rendered to ``<div>`` snippets with fixed ids (no JS included).

Figures are plain plotly.js figure dicts (``data``, ``layout``) serialised with sorted keys and
an explicit ``div_id``, so the same data gives the same bytes. Building ``plotly.graph_objects``
would validate every property in Python — it made a 1,000-run site several times slower — and
the browser's plotly.js validates them anyway. No template is set (plotly.py's default template
adds ~10 kB of JSON per figure). Text supplied by
plugins (method, dataset, video names) passes through :func:`txt`: plotly renders a subset of
HTML in labels, so it is entity-escaped to show literally. Long series are reduced with
:func:`downsample_max` so run pages stay light.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from occbench.leaderboard.stats import FriedmanResult

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
          "#e377c2", "#7f7f7f", "#bcbd22"]
_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}


def txt(s: object) -> str:
    """Plugin-supplied text for a plotly label: HTML-escaped so plotly shows it literally."""
    return html.escape(str(s), quote=False)


Fig = dict[str, Any]

_AXIS = {"gridcolor": "#eee", "zeroline": False, "linecolor": "#444", "showline": True,
         "ticks": "outside", "automargin": True}


def _layout(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "font": _FONT, "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "paper_bgcolor": "white", "plot_bgcolor": "white",
    }
    base.update(kw)
    if isinstance(base.get("title"), dict):  # left-aligned: the mode bar sits on the right
        base["title"] = {"x": 0.01, "xanchor": "left", **base["title"]}
    for ax in ("xaxis", "yaxis"):
        base[ax] = {**_AXIS, **base.get(ax, {})}
    return base


def _json(o: Any) -> str:
    # "<", ">" and "&" escaped as plotly.py does, so no string can close the <script> element
    s = json.dumps(o, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_div(data: list[Fig], layout: Fig, div_id: str, height: int = 360) -> str:
    """The figure as an HTML snippet (needs ``plotly.min.js`` loaded once by the page)."""
    config = {"displaylogo": False, "responsive": True,
              "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
    return (f'<div id="{div_id}" class="plotly-graph-div" style="height:{height}px;'
            f'width:100%;"></div>\n<script>Plotly.newPlot("{div_id}",{_json(data)},'
            f"{_json(layout)},{_json(config)});</script>")


def downsample_max(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: per equal-width bucket the point of largest ``y``.

    Keeps peaks (what a reader looks for in an anomaly score); all-NaN buckets stay NaN gaps.
    """
    n = len(y)
    if n <= max_points:
        return x, y
    starts = np.linspace(0, n, max_points + 1).astype(int)[:-1]
    filled = np.where(np.isnan(y), -np.inf, y)
    bucket_max = np.maximum.reduceat(filled, starts)
    bucket = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    hits = np.flatnonzero(filled == bucket_max[bucket])
    _, first = np.unique(bucket[hits], return_index=True)  # first maximum of every bucket
    idx = hits[first]
    ys = y[idx].astype(np.float64)
    return x[idx], ys


def _r(a: np.ndarray | Sequence[float], nd: int = 4) -> list[float | None]:
    """Rounded floats for JSON (NaN → null); 4 decimals keep pages small and plots exact."""
    x = np.asarray([math.nan if v is None else v for v in a] if isinstance(a, list) else a,
                   dtype=np.float64)
    # rounded in numpy (a Python round per value was a tenth of a run page's time)
    out: list[float | None] = np.round(x, nd).tolist()
    if np.isnan(x).any():
        out = [None if v != v else v for v in out]
    return out


#: numpy dtype -> plotly.js typed-array code
_TYPED = {"float32": "f4", "int32": "i4"}


def typed(a: np.ndarray | Sequence[float], dtype: str = "float32") -> Fig:
    """A long numeric series as a plotly.js typed array (``{"dtype", "bdata"}``: base64 of
    its little-endian bytes; NaN stays NaN, which plotly.js draws as a gap).

    A list of floats costs a float-to-text conversion per value, which was most of a video run
    page's figure JSON (a 6,000-point timeline), and about twice the bytes. ``float32`` keeps 7
    significant digits: more than a plot or its hover text shows."""
    import base64

    arr = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": _TYPED[dtype], "bdata": base64.b64encode(arr.tobytes()).decode("ascii")}


def _evaluated(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items a protocol kept (score not NaN): scores as float64, labels."""
    s = np.asarray(score, dtype=np.float64)
    keep = ~np.isnan(s)
    return s[keep], np.asarray(label)[keep]


def roc_figure(score: np.ndarray, label: np.ndarray, div_id: str, max_points: int = 400,
               order: np.ndarray | None = None) -> str:
    """ROC curve of a run's evaluated scores (``score``, ``label``: per test item, NaN scores
    are items the protocol dropped and are left out; higher score = more anomalous).
    ``order``: ``np.argsort`` (stable) of the kept items' scores, when the caller has it."""
    from occbench.harness.scoring.protocols import roc_points

    s, y = _evaluated(score, label)
    data: list[Fig] = []
    if len(np.unique(y)) == 2:
        # roc_curve's points bit for bit, without its input checks (a third of a page's time)
        fpr, tpr = roc_points(y, s, order=order)
        if len(fpr) > max_points:  # keep the curve's shape: sample evenly along its points
            idx = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
            fpr, tpr = fpr[idx], tpr[idx]
        # in % like every table of the site
        data.append({"type": "scatter", "x": typed(np.round(100 * fpr, 2)),
                     "y": typed(np.round(100 * tpr, 2)),
                     "mode": "lines", "name": "ROC", "line": {"color": COLORS[0], "width": 2}})
    data.append({"type": "scatter", "x": [0, 100], "y": [0, 100], "mode": "lines",
                 "name": "chance", "line": {"color": "#999", "dash": "dot", "width": 1}})
    layout = _layout(xaxis={"title": {"text": "false positive rate %"}, "range": [0, 100]},
                     yaxis={"title": {"text": "true positive rate %"}, "range": [0, 102]},
                     showlegend=False, title={"text": "ROC (pooled over all test items)"})
    return to_div(data, layout, div_id, 380)


def spans(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of label 1 as half-open frame intervals ``[start, end)``."""
    y = np.r_[0, np.asarray(labels, dtype=np.int8), 0]
    d = np.diff(y)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(),
                    strict=True))


def score_timeline_figure(videos: Mapping[str, tuple[np.ndarray, np.ndarray]], div_id: str,
                          total_points: int = 6000,
                          per_video_auc: dict[str, float] | None = None) -> str:
    """Anomaly score over time for each test video, ground-truth anomalous spans shaded.

    ``videos``: video id -> (score after the protocol, NaN where it dropped the frame; label),
    each in frame order (:meth:`RunRead.per_video`). One video is shown at a time (a menu
    switches); every video gets at most ``total_points / n_videos`` points (at least 150) so
    pages stay small.
    """
    vids = sorted(str(v) for v in videos)
    per = max(150, total_points // max(1, len(vids)))
    auc = per_video_auc or {}
    data: list[Fig] = []
    shapes_per: list[list[Fig]] = []
    for i, v in enumerate(vids):
        score, label = videos[v]
        x = np.arange(len(score), dtype=np.int64)
        xd, yd = downsample_max(x, np.asarray(score, dtype=np.float64), per)
        data.append({"type": "scatter", "x": typed(xd, "int32"), "y": typed(np.round(yd, 4)),
                     "mode": "lines",
                     "name": txt(v), "visible": i == 0, "connectgaps": False,
                     "line": {"color": COLORS[0], "width": 1.5}})
        shapes_per.append([
            {"type": "rect", "xref": "x", "yref": "paper", "x0": int(x[a]) - 0.5,
             "x1": int(x[b - 1]) + 0.5, "y0": 0, "y1": 1, "fillcolor": "rgba(214,39,40,0.18)",
             "line": {"width": 0}, "layer": "below"}
            for a, b in spans(label)])

    def title(v: str) -> str:
        extra = f" (AUC {auc[v] * 100:.1f} %)" if v in auc else " (one class only: no AUC)"
        return f"score over time — video {txt(v)}{extra}"

    buttons = [{"label": txt(v), "method": "update",
                "args": [{"visible": [j == i for j in range(len(vids))]},
                         {"shapes": shapes_per[i], "title.text": title(v)}]}
               for i, v in enumerate(vids)]
    layout = _layout(
        title={"text": title(vids[0]) if vids else ""}, xaxis={"title": {"text": "frame"}},
        yaxis={"title": {"text": "anomaly score (after protocol)"}},
        shapes=shapes_per[0] if shapes_per else [], showlegend=False,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 1, "xanchor": "right",
                      "y": 1.2, "yanchor": "top", "showactive": True}] if len(vids) > 1 else [])
    return to_div(data, layout, div_id, 380)


def histogram_figure(score: np.ndarray, label: np.ndarray, div_id: str, bins: int = 40) -> str:
    """Score histograms of normal and anomalous test items (computed here: small pages);
    ``score``/``label`` as :func:`roc_figure` takes them."""
    s, y = _evaluated(score, label)
    edges = np.histogram_bin_edges(s, bins=bins) if len(s) else np.array([0.0, 1.0])
    centers = (edges[:-1] + edges[1:]) / 2
    data: list[Fig] = []
    for lab, name, col in ((0, "normal", COLORS[0]), (1, "anomalous", COLORS[1])):
        h, _ = np.histogram(s[y == lab], bins=edges)
        data.append({"type": "bar", "x": _r(centers, 6), "y": h.tolist(), "name": name,
                     "opacity": 0.6, "marker": {"color": col}})
    layout = _layout(barmode="overlay", bargap=0, title={"text": "score distribution"},
                     xaxis={"title": {"text": "anomaly score"}},
                     yaxis={"title": {"text": "items"}},
                     legend={"orientation": "h", "y": -0.3})
    return to_div(data, layout, div_id, 320)


def class_bars_figure(classes: Sequence[str], aucs: Sequence[float], highlight: str | None,
                      div_id: str, title: str) -> str:
    """AUROC per normal class (the highlighted class drawn in red)."""
    cols = [COLORS[1] if c == highlight else COLORS[0] for c in classes]
    pct = [math.nan if a is None else 100 * float(a) for a in aucs]  # % like the tables
    data = [{"type": "bar", "x": [txt(c) for c in classes], "y": _r(pct, 2),
             "marker": {"color": cols}, "hovertemplate": "class %{x}: %{y} %<extra></extra>"}]
    finite = [a for a in pct if not math.isnan(a)]
    # chance level (50 %) is the honest floor; below it the axis starts at 0
    lo = 50 if finite and min(finite) >= 50 else 0
    layout = _layout(title={"text": txt(title)},
                     xaxis={"title": {"text": "normal class"}, "type": "category"},
                     yaxis={"title": {"text": "AUROC %"}, "range": [lo, 100]})
    return to_div(data, layout, div_id, 320)


def seed_spread_figure(seeds: pd.DataFrame, div_id: str, title: str) -> str:
    """Per-seed headline AUC of each method: a box with every seed drawn as a point."""
    data: list[Fig] = []
    for i, (m, g) in enumerate(seeds.groupby("label", sort=True)):
        g = g.sort_values("seed")
        data.append({"type": "box", "y": _r(100 * g["auc"].to_numpy(np.float64), 2),
                     "name": txt(m),
                     "boxpoints": "all", "jitter": 0.3, "pointpos": 0,
                     "marker": {"color": COLORS[i % len(COLORS)]},
                     "text": [f"seed {s}" for s in g["seed"]], "hoverinfo": "y+text"})
    layout = _layout(title={"text": txt(title)}, showlegend=False,
                     yaxis={"title": {"text": "AUC % (per seed)"}}, xaxis={"type": "category"})
    return to_div(data, layout, div_id, 340)


def cd_figure(fr: FriedmanResult, ranks: pd.DataFrame, div_id: str) -> str:
    """Critical-difference diagram: average rank (1 = best, left), bootstrap rank interval as
    error bars, the Nemenyi CD as a scale bar, and thick bars joining methods that the test
    cannot tell apart."""
    ms = sorted(fr.methods, key=lambda m: (fr.avg_rank[m], m))
    k = len(ms)
    r = ranks.set_index("method") if not ranks.empty else pd.DataFrame()
    x = [fr.avg_rank[m] for m in ms]
    lo = [x[i] - float(r.loc[m, "rank_lo"]) if m in r.index else 0.0 for i, m in enumerate(ms)]
    hi = [float(r.loc[m, "rank_hi"]) - x[i] if m in r.index else 0.0 for i, m in enumerate(ms)]
    y = list(range(k, 0, -1))
    data = [{"type": "scatter", "x": _r(x), "y": y, "mode": "markers+text",
             "text": [txt(m) for m in ms], "textposition": "middle right",
             "marker": {"size": 10, "color": COLORS[0]},
             "error_x": {"type": "data", "symmetric": False, "array": _r(hi),
                         "arrayminus": _r(lo), "color": "#555", "thickness": 1.5, "width": 4},
             "hovertemplate": "%{text}: average rank %{x}<extra></extra>"}]
    cliques = fr.cliques()
    shapes: list[Fig] = [{"type": "line", "x0": 1, "x1": 1 + fr.cd, "y0": k + 1, "y1": k + 1,
                          "line": {"color": "black", "width": 3}}]
    for j, grp in enumerate(cliques):
        yy = 0.4 - 0.25 * j
        shapes.append({"type": "line", "x0": fr.avg_rank[grp[0]] - 0.03,
                       "x1": fr.avg_rank[grp[-1]] + 0.03, "y0": yy, "y1": yy,
                       "line": {"color": COLORS[1], "width": 5}})
    layout = _layout(
        title={"text": f"average rank over {len(fr.blocks)} datasets (Nemenyi CD = "
                       f"{fr.cd:.2f} at α = {fr.alpha})"},
        xaxis={"title": {"text": "average rank (1 = best)"},
               "range": [0.5, max(k, 1 + fr.cd) + 0.8], "tickvals": list(range(1, k + 1)),
               "showgrid": True},
        yaxis={"visible": False, "range": [-0.4 - 0.25 * len(cliques), k + 1.6]},
        shapes=shapes, showlegend=False,
        annotations=[{"x": 1 + fr.cd / 2, "y": k + 1, "text": "critical difference",
                      "showarrow": False, "yshift": 10}])
    return to_div(data, layout, div_id, 140 + 40 * k)


def sweep_figure(df: pd.DataFrame, param: str, objectives: Sequence[str], div_id: str) -> str:
    """Sensitivity of the sweep's objectives to one parameter (one point per trial)."""
    d = df.sort_values(param, kind="stable")
    xv = d[param]
    numeric = pd.api.types.is_numeric_dtype(xv) and not pd.api.types.is_bool_dtype(xv)
    xs = _r(xv.to_numpy(np.float64), 6) if numeric else [txt(v) for v in xv]

    def ys(o: str) -> list[float | None]:
        y = pd.to_numeric(d[o], errors="coerce").to_numpy(np.float64)
        return _r(100 * y, 2) if "auc" in o.lower() else _r(y)  # AUCs in % like the tables

    data = [{"type": "scatter", "x": xs, "y": ys(o), "mode": "markers",
             "name": txt(o) + (" %" if "auc" in o.lower() else ""),
             "marker": {"color": COLORS[i % len(COLORS)], "size": 7}}
            for i, o in enumerate(objectives)]
    xaxis: dict[str, Any] = {"title": {"text": txt(param)}}
    if not numeric:
        xaxis["type"] = "category"
    elif (xv > 0).all() and xv.max() / xv.min() >= 10:  # e.g. learning rates: log scale
        xaxis["type"] = "log"
    layout = _layout(title={"text": f"sensitivity to {txt(param)}"}, xaxis=xaxis,
                     yaxis={"title": {"text": "value"}}, legend={"orientation": "h", "y": -0.3})
    return to_div(data, layout, div_id, 320)

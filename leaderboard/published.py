"""Published numbers beside reproduced ones.

``leaderboard/published.csv`` holds every number transcribed from the papers' tables, one per row:
``paper, table, dataset, protocol, metric, method, normal_class, value, note`` (value a fraction
in [0, 1]; ``normal_class`` a class index, ``mean`` for a class average, empty for video).

The join to the runs is by method label, dataset, protocol *family* (``image`` / ``video``; a
paper's ``as-published`` protocol counts as the family of the dataset's modality, since the
paper's exact protocol is what we try to reproduce), metric (``auc_micro`` is the video headline
``auc``) and normal class (indices are mapped to class names via the dataset plugin when the
runs use names, e.g. CIFAR-10's ``3`` → ``cat``). Published numbers are only ever shown beside a
reproduction; they never enter a ranking.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from occbench.leaderboard.stats import summarize

PUBLISHED_COLUMNS = ["paper", "table", "dataset", "protocol", "metric", "method", "normal_class",
                     "value", "note"]
DEFAULT_PATH = Path(__file__).with_name("published.csv")

COMPARE_COLUMNS = [
    "paper", "table", "method", "dataset", "published_protocol", "protocol", "metric",
    "normal_class", "published", "reproduced", "lo", "hi", "seeds", "diff", "status",
    "selected_on_test", "note",
]

_METRIC_ALIAS = {"auc_micro": "auc"}


class PublishedFormatError(ValueError):
    pass


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Read the published-numbers table; an absent file gives an empty table.

    Raises :class:`PublishedFormatError` naming the file when columns or values are wrong.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.exists():
        return pd.DataFrame(columns=PUBLISHED_COLUMNS)
    try:
        df = pd.read_csv(p, dtype={"normal_class": str, "table": str, "note": str},
                         keep_default_na=False, na_values={"value": ["", "NaN", "nan"]})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PublishedFormatError(f"{p}: cannot be read as CSV ({exc}); fix the file") from exc
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise PublishedFormatError(
            f"{p}: missing columns {missing}; the header must be {','.join(PUBLISHED_COLUMNS)}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    bad = df["value"].notna() & ~df["value"].between(0.0, 1.0)
    if bad.any():
        raise PublishedFormatError(
            f"{p}: values must be fractions in [0, 1] (write 0.966, not 96.6); bad rows: "
            f"{[int(i) + 2 for i in df.index[bad][:5]]}")
    for c in PUBLISHED_COLUMNS:
        if c != "value":
            df[c] = df[c].astype(str)
    return df[PUBLISHED_COLUMNS].reset_index(drop=True)


def family(protocol: str, modality: str | None = None) -> str | None:
    """``image@2`` → ``image``, ``video-minmax@2`` → ``video``; anything else → ``modality``."""
    if protocol.startswith("image"):
        return "image"
    if protocol.startswith("video"):
        return "video"
    return modality


def class_names(dataset: str) -> list[str] | None:
    """Class names of an image dataset plugin in index order, or ``None`` if not available."""
    try:
        from occbench.harness.registry import datasets

        names = datasets.get(dataset)().classes()  # built-in defaults; no data is read
        return [str(c) for c in names] if names else None
    except Exception:  # an unknown or broken plugin must not break the leaderboard
        return None


def reproduced_long(runs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Reproduced numbers in the published table's shape: one row per label × dataset ×
    protocol × metric × class (``mean`` = class mean per seed, ``""`` = video), with mean,
    interval and seed count."""
    from occbench.leaderboard.table import per_seed

    cols = ["label", "dataset", "protocol", "modality", "selected_on_test", "metric",
            "normal_class", "reproduced", "lo", "hi", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    parts = []
    img = runs[runs["modality"] == "image"].copy()
    keys = ["label", "dataset", "protocol", "modality", "selected_on_test"]
    if not img.empty:
        img["normal_class"] = img["normal_class"].astype(str)
        for m in ("auc", "eer"):
            s = summarize(img, [*keys, "normal_class"], m, level)
            parts.append(s.assign(metric=m).rename(columns=_rn(m)))
    ps = per_seed(runs)
    for m in ("auc", "auc_macro", "eer"):
        s = summarize(ps.assign(modality=ps["modality"]), keys, m, level)
        s["normal_class"] = np.where(s["modality"] == "image", "mean", "")
        s = s[(s["modality"] == "video") | (m != "auc_macro")]
        parts.append(s.assign(metric=m).rename(columns=_rn(m)))
    out = pd.concat(parts, ignore_index=True)
    return out[out["reproduced"].notna()][cols].reset_index(drop=True)


def _rn(m: str) -> dict[str, str]:
    return {f"{m}_mean": "reproduced", f"{m}_lo": "lo", f"{m}_hi": "hi", f"{m}_n": "seeds"}


def compare(published: pd.DataFrame, runs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Published rows (of methods that have runs) joined to reproductions (``COMPARE_COLUMNS``).

    ``diff`` = reproduced − published; ``status`` is ``inside`` / ``outside`` (published value
    outside the reproduced ``level`` interval over seeds), ``no interval`` (one seed) or
    ``not reproduced``.
    """
    if published.empty or runs.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    labels = set(runs["label"].astype(str))
    pub = published[published["method"].isin(labels)].copy()
    if pub.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    # only entries the published table names are joined: the others need no summary (a
    # store of 100,000 runs of other methods spent 0.4 s of each board there)
    rep = reproduced_long(runs[runs["label"].astype(str).isin(set(pub["method"]))], level)
    modality = runs.groupby("dataset")["modality"].first().to_dict()
    pub["family"] = [family(p, modality.get(d)) for p, d in zip(pub["protocol"], pub["dataset"],
                                                                  strict=True)]
    pub["metric_key"] = pub["metric"].map(lambda m: _METRIC_ALIAS.get(m, m))
    pub["class_key"] = [_class_key(c, d, runs) for c, d in zip(pub["normal_class"],
                                                             pub["dataset"], strict=True)]
    rep["family"] = [family(p, m) for p, m in zip(rep["protocol"], rep["modality"], strict=True)]
    j = pub.merge(rep, how="left", left_on=["method", "dataset", "family", "metric_key",
                                            "class_key"],
                  right_on=["label", "dataset", "family", "metric", "normal_class"],
                  suffixes=("", "_rep"))
    j = j.rename(columns={"protocol": "published_protocol", "protocol_rep": "protocol",
                          "value": "published"})
    # show the class as the runs name it ("tshirt", not the paper's index "0")
    j["normal_class"] = [k if k else c for k, c in zip(j["class_key"], j["normal_class"],
                                                        strict=True)]
    j["diff"] = j["reproduced"] - j["published"]
    j["status"] = [_status(v, lo, hi, r) for v, lo, hi, r in
                   zip(j["published"], j["lo"], j["hi"], j["reproduced"], strict=True)]
    j["selected_on_test"] = j["selected_on_test"].astype(object).where(
        j["selected_on_test"].notna(), None)
    out = j[COMPARE_COLUMNS].sort_values(
        ["method", "dataset", "metric", "normal_class", "paper", "table", "protocol"],
        kind="stable", na_position="last")
    return out.reset_index(drop=True)


def _class_key(c: str, dataset: str, runs: pd.DataFrame) -> str:
    if c in ("", "nan", "None"):
        return ""
    if c == "mean" or not c.isdigit():
        return c
    have = set(runs.loc[runs["dataset"] == dataset, "normal_class"].dropna().astype(str))
    if c in have or not have:
        return c
    names = class_names(dataset)
    if names and int(c) < len(names):
        return names[int(c)]
    return c


def _status(v: float, lo: float, hi: float, rep: float) -> str:
    if rep is None or (isinstance(rep, float) and math.isnan(rep)):
        return "not reproduced"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "no published value"
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return "no interval"
    return "inside" if lo <= v <= hi else "outside"

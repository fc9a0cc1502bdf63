"""The static leaderboard site: ``occbench board --site``.

Layout of the output folder (every link relative, so ``index.html`` opens from disk)::

    index.html                 overview: datasets × methods matrix, ranking, CD diagram
    datasets/<slug>.html       sortable table, seed spread, per-class table, paired tests
    methods/<slug>.html        description, parameters, results everywhere, published vs ours
    runs/<job_id>.html         ROC, score over time (video) or per-class bars (images), record
    sweeps.html                sweep sensitivity (when STORE/sweeps/*.parquet exist)
    static/                    plotly.min.js (from the installed plotly), style.css, sort.js
    data/*.csv                 the tables behind the pages

Pages embed their data (no fetch of JSON: browsers refuse it on file://). jinja2 autoescapes
everything; plotly labels from plugins go through :func:`plots.txt`. No timestamps, sorted
iteration and fixed plot ids make the output a pure function of the store.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from markupsafe import Markup
from occbench.harness.store.paths import UnsafePathError, inside
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard import plots
from occbench.leaderboard.analysis import (
    Analysis,
    analyze,
    failure_groups,
    failures_markdown,
    write_tables,
)
from occbench.leaderboard.pages import (
    SiteOptions,
    _build_run_pages,
    _env,
    _render,
    _RunContext,
    _RunItem,
    code_fingerprint,
)
from occbench.leaderboard.pages import sig as sig  # (re-exported: the site's filters)
from occbench.leaderboard.pages import slug as slug
from occbench.leaderboard.stats import ALL_PAIRS_MAX
from occbench.leaderboard.table import display_table, markdown, write_board

#: The marker of a folder the board made: JSON ``{"schema", "files": [relative paths]}``.
MARKER = ".occbench-site"
MARKER_SCHEMA = "occbench.site/1"
STAGING_PREFIX = ".occbench-staging-"
#: Held while a build writes into ``--out`` (two boards into one folder would mix their files).
LOCK = ".occbench-site.lock"
#: Input key of every run page of the last build (``runs/<job_id>.html`` -> sha256).
MANIFEST = ".occbench-pages.json"
MANIFEST_SCHEMA = "occbench.site-pages/1"
#: The rows of the runs table as last read, keyed by their files' stat keys
#: (:func:`occbench.leaderboard.table.runs_frame`).
RUNS_CACHE = ".occbench-runs-cache.arrow"
_RUN_PAGE_RE = re.compile(r"runs/[0-9a-f]{20}\.html|(datasets|methods)/[\w.-]+\.html")
#: A dataset page lists this many runs; the rest go to numbered run-list pages.
RUNS_PER_PAGE = 500


class SiteError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------


def _static_dir() -> Path:
    """``occbench.site``'s ``static/`` folder (CSS and the table-sorting script)."""
    import occbench.site

    return Path(occbench.site.__file__).resolve().parent / "static"


def _manifest(out: Path) -> set[str]:
    """The files a previous build listed in ``out``'s marker; empty set for a new or empty folder.

    Raises :class:`SiteError` for a file, a non-empty folder without our marker (a store, a data
    folder, anyone's files: never ours to replace), or a marker that is not our file list.
    """
    if not out.exists():
        return set()
    if not out.is_dir():
        raise SiteError(f"--out {out} is a file; choose a folder for the board")
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
        if names:
            raise SiteError(f"--out {out} is not empty and not an occbench site (no {MARKER} "
                            f"from `occbench board`; it holds {names[:3]}); choose a new or "
                            "empty folder for --out")
        return set()
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        files = data["files"] if data.get("schema") == MARKER_SCHEMA else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError("no file list")
    except (ValueError, AttributeError, KeyError, UnicodeDecodeError) as exc:
        raise SiteError(f"{marker} is not a file list of this occbench ({exc}; an older board "
                        f"or an edited marker): delete {out} yourself or choose a new --out "
                        "folder") from None
    out_files: set[str] = set()
    for f in files:
        # a hand-edited or hostile marker must not make the rebuild delete outside --out; a
        # build writes only plain relative paths ("a/b.html"), so anything else is refused
        # (string checks: Path objects were a second per 100,000 pages)
        parts = f.split("/")
        if (not f or f.startswith("/") or "\\" in f or f == MARKER
                or any(p in ("", ".", "..") for p in parts)):
            raise SiteError(f"{marker}: {f!r} is not a path inside the site; delete {out} "
                            "yourself or choose a new --out folder")
        out_files.add(f)
    return out_files


class _PlainFiles:
    """``rel in files``: ``root/rel`` is a regular file, not a symlink, from one ``scandir``
    per folder (the entry types a folder listing gives: an ``lstat`` per page was a second of
    a rebuild at 100,000 pages, and it was taken twice)."""

    def __init__(self, root: Path | str) -> None:
        self.root = str(root)
        self.dirs: dict[str, set[str]] = {}

    def _names(self, d: str) -> set[str]:
        names = self.dirs.get(d)
        if names is None:
            names = self.dirs[d] = set()
            path = f"{self.root}/{d}" if d else self.root
            try:
                try:
                    with os.scandir(path) as it:
                        names.update(e.name for e in it if e.is_file(follow_symlinks=False))
                except FileNotFoundError:
                    raise
                except OSError:  # an entry of unknown type gone while listing: one by one
                    names.clear()
                    with os.scandir(path) as it:
                        for e in it:
                            with contextlib.suppress(OSError):
                                if e.is_file(follow_symlinks=False):
                                    names.add(e.name)
            except OSError:  # no such folder (yet), or not one
                pass
        return names

    def __contains__(self, rel: str) -> bool:
        d, _, name = rel.rpartition("/")
        return name in self._names(d)

    def among(self, rels: Iterable[str]) -> set[str]:
        """Those of ``rels`` that are regular files (as ``in``, with one listing per
        folder)."""
        out: set[str] = set()
        dirs = self.dirs
        for rel in rels:
            d, _, name = rel.rpartition("/")
            names = dirs.get(d)
            if name in (names if names is not None else self._names(d)):
                out.add(rel)
        return out


def _marker_stat(out: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(out / MARKER)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _json_lines(head: dict[str, Any], name: str, items: Iterable[str],
                mapping: bool = False) -> str:
    """A JSON object: ``head``'s fields, then ``name`` holding ``items`` (JSON texts, one per
    line) as a list, or as an object when ``mapping`` (items are ``"key": value``). The
    items are quoted by the C encoder's function: ``json.dumps(indent=...)`` runs Python's
    encoder, half a second per 100,000 pages."""
    body = ",\n ".join(items)
    opening, closing = ("{", "}") if mapping else ("[", "]")
    return (json.dumps(head)[:-1] + f', "{name}": {opening}'
            + (f"\n {body}\n" if body else "") + closing + "}\n")


def _write_marker(out: Path, files: Iterable[str]) -> None:
    tmp = out / f"{MARKER}.{uuid.uuid4().hex}.tmp"
    head = {"schema": MARKER_SCHEMA,
            "note": "written by `occbench board`; a rebuild deletes only the files listed here"}
    quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
    tmp.write_text(_json_lines(head, "files", map(quote, sorted(set(files)))),
                   encoding="utf-8")
    os.replace(tmp, out / MARKER)


@dataclass
class SiteOutput:
    """One build into ``--out``: write into ``stage``; ``prev`` is what the previous build
    listed; add to ``keep`` the files of it to keep as they are (unchanged run pages)."""

    out: Path
    stage: Path
    prev: set[str]
    keep: set[str]


@contextmanager
def site_output(out: str | Path) -> Iterator[SiteOutput]:
    """A staging folder for one build of the board into ``out``; committed when the block ends.

    ``out`` must be new, empty or a previous build (:data:`MARKER` lists its files). The build
    writes into the staging folder (inside ``out``, so moving is a rename); on success the
    previous build's files are deleted, the new ones moved in and the marker rewritten. Files
    that are not in the marker are never deleted or overwritten: one in the way of a new page
    is an error and nothing changes. On an error inside the block nothing in ``out`` changes
    but the (empty) marker of a folder this build just made.
    """
    outp = Path(out)
    seen = _marker_stat(outp)
    first = _manifest(outp)  # refuse a foreign folder before creating anything in it
    outp.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(outp / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SiteError(f"another `occbench board` is writing into {outp}; wait for it to "
                        "finish or choose another --out") from None
    try:
        # again, now that no other build can change it (unless the marker is as it was: a
        # list of 100,000 pages is not read twice)
        prev = first if seen is not None and _marker_stat(outp) == seen else _manifest(outp)
        if not (outp / MARKER).exists():
            _write_marker(outp, prev)  # claim the folder before anything else is written
        for p in outp.glob(f"{STAGING_PREFIX}*"):  # a build killed before it finished
            if (p.is_dir() and not p.is_symlink()
                    and re.fullmatch(rf"{STAGING_PREFIX}\w+", p.name)):
                shutil.rmtree(p)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=outp))
        try:
            so = SiteOutput(outp, stage, prev, set())
            yield so
            _commit(outp, stage, prev, so.keep & prev)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        lock.release()


def _commit(out: Path, stage: Path, prev: set[str], keep: set[str]) -> None:
    new = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*")
                 if p.is_file() and not p.is_symlink())
    keep = _PlainFiles(out).among(keep - set(new))
    for rel in new:
        dst = out / rel
        try:
            inside(out, dst)  # a foreign symlinked folder in the way is caught here
        except UnsafePathError as exc:
            raise SiteError(f"{exc}: move it out of --out {out} or choose another folder"
                            ) from None
        ours = rel in prev and dst.is_file() and not dst.is_symlink()
        if not ours and (dst.exists() or dst.is_symlink()):
            raise SiteError(f"{dst} exists and is not from a previous board build (not in "
                            f"{MARKER}); move it out of --out or choose another folder")
        for parent in dst.relative_to(out).parents:
            q = out / parent
            if q != out and (q.is_symlink() or (q.exists() and not q.is_dir())):
                raise SiteError(f"{q} is in the way of the board's {rel}; move it out of "
                                "--out or choose another folder")
    # the marker lists old and new files while both may be there: a kill in between leaves
    # nothing the next build would take for foreign
    _write_marker(out, prev | set(new))
    dirs: set[Path] = set()
    for rel in sorted(prev - set(new) - keep):
        p = out / rel
        if p.is_symlink() or not p.is_file():
            continue  # replaced by something else since: not ours any more
        p.unlink()
        dirs.update(q for q in p.parents if q != out and out in q.parents)
    for rel in new:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, dst)
    for d in sorted(dirs, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: a foreign file beside our pages
            d.rmdir()
    _write_marker(out, set(new) | keep)


def _read_manifest(out: Path) -> dict[str, str]:
    try:
        doc = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    pages = doc.get("pages") if isinstance(doc, dict) else None
    if not isinstance(pages, dict) or doc.get("schema") != MANIFEST_SCHEMA:
        return {}
    return {str(k): str(v) for k, v in pages.items()
            if isinstance(k, str) and _RUN_PAGE_RE.fullmatch(k)}


def _write_manifest(out: Path, pages: dict[str, str]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
    tmp.write_text(_json_lines({"schema": MANIFEST_SCHEMA}, "pages",
                               (f"{quote(k)}: {quote(v)}" for k, v in sorted(pages.items())),
                               mapping=True),
                   encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def _copy_static(out: Path) -> None:
    import plotly.offline

    st = out / "static"
    st.mkdir(parents=True, exist_ok=True)
    # plotly's own bundle, from the installed package: no CDN, works offline and on file://
    (st / "plotly.min.js").write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    src = _static_dir()
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix in (".css", ".js"):
            shutil.copyfile(p, st / p.name)


def _plain(v: Any) -> Any:
    """A page context's value as JSON can write it exactly (numpy scalars), or TypeError."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"no exact text for {type(v).__name__}")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts of Python values, as ``to_dict("records")`` gives them: built from
    one ``tolist()`` per column (to_dict boxed every value on its own: 5 s for 100,000 runs)."""
    cols = [str(c) for c in df.columns]
    values = [df.iloc[:, i].tolist() for i in range(len(cols))]
    return [dict(zip(cols, row, strict=True)) for row in zip(*values, strict=True)] \
        if cols else [{} for _ in range(len(df))]


def _method_info(name: str) -> dict[str, Any]:
    """What the registry knows of a plugin: description, version, default params, source."""
    try:
        from occbench.harness.registry import methods

        e = methods.entry(name)
        cls: Any = e.obj
        return {"description": str(getattr(cls, "description", "") or (cls.__doc__ or "")),
                "version": str(getattr(cls, "version", "")), "source": e.source,
                # JSON, as run parameters are shown: "scale", not 'scale'
                "defaults": {k: json.dumps(v, default=str)
                             for k, v in sorted(cls.default_params().items())},
                "modalities": sorted(getattr(cls, "modalities", []))}
    except Exception:  # method not installed here (store from elsewhere): show what runs say
        return {"description": "", "version": "", "source": "not installed", "defaults": {},
                "modalities": []}


def _dataset_info(name: str) -> dict[str, Any]:
    try:
        from occbench.harness.registry import datasets

        e = datasets.entry(name)
        cls: Any = e.obj
        return {"description": str(getattr(cls, "description", "") or ""),
                "version": str(getattr(cls, "version", "")), "source": e.source}
    except Exception:
        return {"description": "", "version": "", "source": "not installed"}


class _Builder:
    def __init__(self, store: RunStore, out: Path, a: Analysis, opts: SiteOptions) -> None:
        self.store, self.out, self.a, self.opts = store, out, a, opts
        self.env = _env()
        self.written: list[Path] = []
        labels = sorted(a.runs["label"].astype(str).unique()) if not a.runs.empty else []
        dsets = sorted(a.runs["dataset"].astype(str).unique()) if not a.runs.empty else []
        self.mslug = _unique_slugs(labels)
        self.dslug = _unique_slugs(dsets)
        # image run pages show their siblings (other classes, same seed): group once, not per run
        img = a.runs[a.runs["modality"] == "image"] if not a.runs.empty else a.runs
        self.siblings = _siblings(img)
        self._groups: dict[str, dict[Any, np.ndarray]] = {}

    #: set by :func:`build`: the previous build's page keys and files, what this build keeps
    #: unchanged, the keys of this build's keyed pages, and what every keyed page depends on
    previous: dict[str, str]
    prev_files: set[str]
    keep: set[str]
    keys: dict[str, str]
    page_common: str
    store_out: Path
    plain: _PlainFiles  # the regular files of the previous build in --out

    @functools.cached_property
    def row_hashes(self) -> np.ndarray:
        """Each run row's hash (uint64, of its values with their types), in ``a.runs`` order:
        taken once for the run-page keys and the run-list pages (a row's hash does not
        depend on the other rows). Hashed as they are: as text they took 1.5 s at 100,000
        runs, against 0.12 s."""
        if self.a.runs.empty:
            return np.zeros(0, dtype=np.uint64)
        return pd.util.hash_pandas_object(self.a.runs, index=False).to_numpy()

    def keep_unchanged(self, rel: str, key: str) -> bool:
        """Record ``rel``'s key; True (and the page kept as it is) when the previous build
        made it from the same inputs and it is still there, untouched by anyone else."""
        return self.keep_unchanged_all([(rel, key)])[0]

    def keep_unchanged_all(self, pages: list[tuple[str, str]]) -> list[bool]:
        """:meth:`keep_unchanged` of each (page, key), with set operations (a call per page
        was a third of a second at 100,000 pages)."""
        self.keys.update(pages)
        prev = self.previous
        same = {rel for rel, key in pages if prev.get(rel) == key} & self.prev_files
        kept = self.plain.among(same)
        self.keep |= kept
        return [rel in kept for rel, _ in pages]

    def render_keyed(self, rel: str, template: str, **ctx: Any) -> None:
        """:meth:`render`, unless the previous build rendered ``rel`` from the same context
        and the same code (then it is kept as it is): a new run changes one dataset's page
        and few method pages."""
        try:
            text = json.dumps([code_fingerprint(template, "site.py"), self.mslug, self.dslug,
                               bool(self.a.sweeps), rel, ctx], default=_plain)
        except (TypeError, ValueError):  # a value without an exact text: always rendered
            text = None
        if text is not None and self.keep_unchanged(
                rel, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()):
            return
        self.render(rel, template, **ctx)

    def render(self, rel: str, template: str, **ctx: Any) -> None:
        self.written.append(_render(self.env, self.out, rel, template, self.mslug, self.dslug,
                                    bool(self.a.sweeps), **ctx))

    # -- overview ------------------------------------------------------------------------------
    def overview(self) -> None:
        a = self.a
        agg = a.agg[~a.agg["selected_on_test"]] if not a.agg.empty else a.agg
        # columns: the methods with a ranked number somewhere (runs selected on test labels,
        # shown on the dataset pages only, would be empty columns here)
        shown = agg[agg.apply(lambda r: a.ranking_blocks.get(r["dataset"]) == r["protocol"],
                              axis=1)] if not agg.empty else agg
        labels = sorted(shown["method"].astype(str).unique()) if not shown.empty else []
        matrix = []
        for ds in sorted(a.ranking_blocks):
            pr = a.ranking_blocks[ds]
            row = agg[(agg["dataset"] == ds) & (agg["protocol"] == pr)].set_index("method")
            best = row["auc_mean"].max() if len(row) else math.nan
            cells: list[dict[str, Any] | None] = []
            for m in labels:
                if m in row.index:
                    r = row.loc[m]
                    cells.append({"mean": r["auc_mean"], "lo": r["auc_lo"], "hi": r["auc_hi"],
                                  "n": int(r["seeds"]),
                                  "best": bool(r["auc_mean"] == best),
                                  # the trust tags the dataset pages show, on its number here
                                  **{f: bool(r.get(f, False)) for f in
                                     ("unsealed", "transductive", "unchecked")}})
                else:
                    cells.append(None)
            matrix.append({"dataset": ds, "protocol": pr, "cells": cells,
                           "modality": str(row["modality"].iloc[0]) if len(row) else ""})
        # many methods on few datasets (the usual case) read better as one row per method,
        # best first by the mean over datasets of the cell values (past 5 methods: the
        # reference board's 8 method columns needed a scrollbar at 1,400 px)
        by_method: list[dict[str, Any]] = []
        if len(labels) > 5 and len(labels) > len(matrix):
            for i, m in enumerate(labels):
                cells_m = [row["cells"][i] for row in matrix]
                vals = [c["mean"] for c in cells_m if c is not None]
                by_method.append({"method": m, "cells": cells_m,
                                  "key": -float(np.mean(vals)) if vals else math.inf})
            by_method.sort(key=lambda r: (r["key"], r["method"]))
        fr = a.friedman
        cd = plots.cd_figure(fr, a.rank_uncertainty, "cd-diagram") if fr else ""
        ranks = []
        if fr:
            ru = a.rank_uncertainty.set_index("method")
            for m in sorted(fr.methods, key=lambda m: (fr.avg_rank[m], m)):
                ranks.append({"method": m, "avg": fr.avg_rank[m],
                              "lo": ru.loc[m, "rank_lo"], "hi": ru.loc[m, "rank_hi"],
                              "p_best": ru.loc[m, "p_best"]})
        self.render("index.html", "index.html", labels=labels, matrix=matrix,
                    by_method=by_method, friedman=fr,
                    cd_div=Markup(cd), ranks=ranks, n_runs=len(a.runs),
                    n_failed=len(a.failures), failures=failure_groups(a.failures),
                    n_boot=a.n_boot,
                    datasets=sorted(self.dslug), methods=sorted(self.mslug),
                    other_protocols=_other_protocols(a))

    # -- dataset pages -------------------------------------------------------------------------
    def dataset(self, ds: str) -> None:
        a = self.a
        runs = self.runs_of("dataset", ds)
        agg = a.agg[a.agg["dataset"] == ds]
        pb = a.p_best[a.p_best["dataset"] == ds].set_index("method") if len(a.p_best) else None
        tables = []
        for pr, g in agg.groupby("protocol", sort=True):
            rows = []
            for r in _records(g):
                r["p_best"] = (pb.loc[r["method"], "p_best"] if pb is not None
                               and r["method"] in pb.index
                               and a.ranking_blocks.get(ds) == pr
                               and not r["selected_on_test"] else math.nan)
                rows.append(r)
            gpu = bool((g["gpu_hours"].fillna(0) > 0).any() or g["peak_gpu_mb"].notna().any())
            tables.append({"protocol": pr, "rows": rows, "gpu": gpu,
                           "ranked": a.ranking_blocks.get(ds) == pr})
        seeds = a.seeds[(a.seeds["dataset"] == ds)]
        spread = []
        for i, (pr, g) in enumerate(seeds.groupby("protocol", sort=True)):
            spread.append(Markup(plots.seed_spread_figure(
                g, f"seed-spread-{i}", f"per-seed AUC — {ds} · {pr}")))
        modality = str(runs["modality"].iloc[0]) if len(runs) else ""
        class_tables = []
        if modality == "image" and len(a.classes):
            cl = a.classes[a.classes["dataset"] == ds]
            for pr, g in cl.groupby("protocol", sort=True):
                names = _sorted_classes(g["normal_class"].astype(str).unique())
                by = {}
                for (m, sot), gg in g.groupby(["method", "selected_on_test"], sort=True):
                    cells = {str(c): r for c, r in zip(gg["normal_class"].astype(str),
                                                      _records(gg), strict=True)}
                    mean_row = agg[(agg["method"] == m) & (agg["protocol"] == pr)
                                   & (agg["selected_on_test"] == sot)]
                    by[(m, sot)] = {"method": m, "selected_on_test": sot,
                                    "cells": [cells.get(c) for c in names],
                                    "mean": mean_row["auc_mean"].iloc[0] if len(mean_row)
                                    else math.nan}
                class_tables.append({"protocol": pr, "classes": names,
                                     "rows": [by[k] for k in sorted(by)]})
        comp = _records(a.comparisons[a.comparisons["dataset"] == ds])
        pubrows = a.published[(a.published["dataset"] == ds)
                              & (a.published["status"] != "not reproduced")]
        n_unrep = int(((a.published["dataset"] == ds)
                       & (a.published["status"] == "not reproduced")).sum())
        sweeps = [n for n, df in sorted(a.sweeps.items())
                  if "dataset" in df.columns and ds in set(df["dataset"].astype(str))]
        ordered = runs.sort_values(["label", "protocol", "seed", "normal_class", "job_id"],
                                   key=_class_sort_key)
        n_runs = len(ordered)
        # a sweep of thousands of runs would make a page of megabytes: past RUNS_PER_PAGE the
        # dataset page lists its methods instead, and each method's runs are on pages of their
        # own (``<dataset>-runs-<method>[-<n>].html``) that depend on that method's runs only:
        # a new run rebuilds its method's pages, not the dataset's whole list (paging the
        # dataset's list as one made every page after the new run's change)
        by_method: list[dict[str, Any]] = []
        if n_runs > RUNS_PER_PAGE:
            by_method = self._run_lists(ds, ordered, str(runs["modality"].iloc[0]))
        runrows_shown = [] if by_method else _records(ordered)
        self.render_keyed(f"datasets/{self.dslug[ds]}.html", "dataset.html", dataset=ds,
                    info=_dataset_info(ds), modality=modality, tables=tables, spread=spread,
                    class_tables=class_tables, comparisons=comp, published=_records(pubrows),
                    n_unreproduced=n_unrep, sweeps=sweeps, runs=runrows_shown,
                    n_runs=n_runs, by_method=by_method,
                    ranking_protocol=a.ranking_blocks.get(ds), all_pairs_max=ALL_PAIRS_MAX,
                    n_entries=int(runs.loc[~runs["selected_on_test"], "label"].nunique()),
                    failures=failure_groups(a.failures[a.failures["dataset"] == ds]))

    def _run_lists(self, ds: str, ordered: pd.DataFrame, modality: str
                   ) -> list[dict[str, Any]]:
        """Each method's run-list pages on ``ds`` (``ordered``: the dataset's runs, sorted by
        method label first), kept unrendered when their key is the previous build's; returns
        the dataset page's index of them (method, runs, pages)."""
        dslug = self.dslug[ds]
        # ``ordered``'s index is its rows' positions in a.runs (a RangeIndex, filtered, sorted)
        row_hashes = self.row_hashes[self.a.runs.index.get_indexer(ordered.index)]
        labels = ordered["label"].astype(str).to_numpy()
        cuts = [0, *(np.flatnonzero(labels[1:] != labels[:-1]) + 1).tolist(), len(labels)]
        columns = list(map(str, ordered.columns))
        index = []
        for lo, hi in itertools.pairwise(cuts):
            label, n = str(labels[lo]), hi - lo
            base = f"{dslug}-runs-{self.mslug[label]}"
            pages: list[dict[str, Any]] = [
                {"n": k + 1, "first": k * RUNS_PER_PAGE + 1,
                 "last": min((k + 1) * RUNS_PER_PAGE, n),
                 "href": f"{base}.html" if k == 0 else f"{base}-{k + 1}.html"}
                for k in range(math.ceil(n / RUNS_PER_PAGE))]
            for pg in pages:
                i0, i1 = lo + int(pg["first"]) - 1, lo + int(pg["last"])
                rel = f"datasets/{pg['href']}"
                # keyed by its rows (hashed) and links, as run pages are: an unchanged page is
                # kept unrendered (rendering was most of a rebuild at 10,000 runs)
                key = hashlib.sha256(json.dumps(
                    [self.page_common, ds, label, n, pages, pg["n"], columns], default=str
                ).encode() + row_hashes[i0:i1].tobytes()).hexdigest()
                if self.keep_unchanged(rel, key):
                    continue
                self.render(rel, "dataset_runs.html", dataset=ds, method=label,
                            modality=modality, n_runs=n, runs=_records(ordered.iloc[i0:i1]),
                            run_pages=pages, page=pg["n"])
            index.append({"method": label, "n": n, "pages": pages})
        return index

    # -- method pages --------------------------------------------------------------------------
    def runs_of(self, column: str, value: str) -> pd.DataFrame:
        """The rows of ``a.runs`` whose ``column`` (as text) is ``value``, in table order
        (the groups found once: a comparison over 100,000 rows per page was a second of a
        rebuild)."""
        groups = self._groups.get(column)
        if groups is None:
            groups = self._groups[column] = (
                self.a.runs.groupby(self.a.runs[column].astype(str), sort=False).indices
                if not self.a.runs.empty else {})
        at = groups.get(value)
        return self.a.runs.take(at) if at is not None else self.a.runs.iloc[0:0]

    def method(self, label: str) -> None:
        a = self.a
        runs = self.runs_of("label", label)
        plugin = str(runs["method"].iloc[0])
        versions = sorted(runs["method_version"].astype(str).unique())
        params = []
        # the runs table holds each run's parameters: the records are not read again
        for text in sorted(set(runs["method_params"].astype(str))):
            p = json.loads(text)
            params.append({k: json.dumps(v, default=str) for k, v in sorted(p.items())})
        params.sort(key=lambda d: json.dumps(d, sort_keys=True))
        mg = a.agg[a.agg["method"] == label]
        agg = _records(mg)
        # the GPU column only for a method that used a GPU (a CPU method's 0.0000 is noise)
        gpu = bool((mg["gpu_hours"].fillna(0) > 0).any() or mg["peak_gpu_mb"].notna().any())
        mine = a.published[a.published["method"] == label]
        rep = mine["status"] != "not reproduced"
        self.render_keyed(f"methods/{self.mslug[label]}.html", "method.html", label=label,
                    plugin=plugin, info=_method_info(plugin), versions=versions,
                    params=params[:20], n_param_sets=len(params), results=agg, gpu=gpu,
                    published=_records(mine[rep]), unreproduced=_records(mine[~rep]))

    # -- run pages -----------------------------------------------------------------------------
    def run_items(self, rows: Sequence[int] | None = None
                  ) -> list[tuple[dict[str, Any], tuple[list[str], list[float]] | None]]:
        """Each run row (or those at positions ``rows`` of ``a.runs``) with what its page shows
        of its siblings (image runs: the AUC of every class of the same entry and seed)."""
        items: list[tuple[dict[str, Any], tuple[list[str], list[float]] | None]] = []
        runs = self.a.runs if rows is None else self.a.runs.iloc[list(rows)]
        for row in _records(runs):
            sib = None
            if row["modality"] != "video":
                sib = self.siblings[(row["label"], row["dataset"], row["protocol"], row["seed"])]
            items.append((row, sib))
        return items

    def run_context(self) -> _RunContext:
        return _RunContext(str(self.store.path), self.store.protocol, str(self.out), self.opts,
                           self.mslug, self.dslug, bool(self.a.sweeps))

    # -- sweeps --------------------------------------------------------------------------------
    def sweeps(self) -> None:
        items = []
        for i, (name, df) in enumerate(sorted(self.a.sweeps.items())):
            items.append(_sweep_item(i, name, df))
        self.render("sweeps.html", "sweeps.html", sweeps=items)


def _files_key(store: RunStore, jid: str, protocol: str) -> str:
    """The stat key of a run's files and its metrics file under ``protocol`` (for an analysis
    made elsewhere, without the row pass's keys)."""
    files = []
    d = store.runs_dir / jid
    for name in sorted(os.listdir(d)):
        st = os.stat(d / name)
        files.append(f"{name}.{st.st_size}.{st.st_mtime_ns}")
    try:
        st = os.stat(store.metrics_path(jid, protocol))
        files.append(f"metrics.{st.st_size}.{st.st_mtime_ns}")
    except (OSError, ValueError):
        files.append("metrics.-")
    return "|".join(files)


def _protocol_digest(pid: str) -> str:
    from occbench.harness.scoring.protocols import get_protocol

    pdig = _PROTOCOL_DIGESTS.get(pid)
    if pdig is None:
        try:
            pdig = get_protocol(pid).digest
        except Exception:  # an unknown protocol: the page says so, keyed by its id
            pdig = pid
        _PROTOCOL_DIGESTS[pid] = pdig
    return pdig


#: Two independent keys of the row hash (pandas' SipHash key is 16 characters): a page key
#: has 128 bits of the inputs' hash.
_HASH_KEYS = ("occbench-pages-1", "occbench-pages-2")


def _run_page_keys(store: RunStore, common: str, b: _Builder) -> list[tuple[str, str]]:
    """Each run's job id and its page's key, in ``a.runs`` order: what the page is a function
    of. The run's
    files (immutable once written: their size, modification time and inode stand for their
    content, as the row pass read them), its metrics file under the page's protocol, that
    protocol's code, its row and siblings in the tables, the links it makes (the slugs), and
    ``common`` (the site code, options and the table's columns). Equal keys mean
    byte-identical pages.

    Hashed for all runs at once (pandas' hash of each row, two 64-bit SipHash keys): a JSON
    text and a sha256 per run were 6 s of a rebuild at 100,000 runs."""
    a = b.a
    runs = a.runs
    if runs.empty:
        return []
    jids = runs["job_id"].astype(str).tolist()
    protocols = runs["protocol"].astype(str).tolist()
    files = runs["job_id"].astype(object).map(a.row_keys).astype(object)
    if files.isna().any():  # an analysis made elsewhere: without the row pass's keys
        files = pd.Series([k if isinstance(k, str) else _files_key(store, j, p)
                           for k, j, p in zip(files, jids, protocols, strict=True)],
                          dtype=object)
    files = files.reset_index(drop=True)
    # what many rows share is hashed once and taken by each row: its siblings (one text per
    # entry and seed), protocol digest and slugs (hashing a text per row and column was
    # most of the keys' time)
    groups = list(b.siblings)
    at = {k: n for n, k in enumerate(groups)}
    image = (runs["modality"] != "video").to_numpy()
    cols = zip(*(runs[c].tolist() for c in ("label", "dataset", "protocol", "seed")),
               strict=True)
    sib_code = np.fromiter((at[k] if img else -1 for k, img in zip(cols, image.tolist(),
                                                                   strict=True)),
                           np.int64, len(runs))
    sib_text = pd.Series([json.dumps(b.siblings[k]) for k in groups], dtype=object)
    shared = {
        "sib": (sib_code, sib_text),
        "protocol": _codes(protocols, _protocol_digest),
        "mslug": _codes(runs["label"].astype(str).tolist(), lambda v: b.mslug.get(v, "")),
        "dslug": _codes(runs["dataset"].astype(str).tolist(), lambda v: b.dslug.get(v, "")),
    }
    h: list[np.ndarray] = []
    for key in _HASH_KEYS:
        frame = pd.DataFrame({"row": b.row_hashes, "files": files, **{
            name: _taken(codes, pd.util.hash_array(texts.to_numpy(), hash_key=key))
            for name, (codes, texts) in shared.items()}})
        # (not categorized first: every run's files key is its own)
        h.append(pd.util.hash_pandas_object(frame, index=False, hash_key=key,
                                            categorize=False).to_numpy())
    c = hashlib.sha256(common.encode()).hexdigest()[:16]
    return [(j, f"{c}{x:016x}{y:016x}")
            for j, x, y in zip(jids, h[0].tolist(), h[1].tolist(), strict=True)]


def _codes(values: list[str], text: Callable[[str], str]) -> tuple[np.ndarray, pd.Series]:
    """Each value's position among the distinct values, and ``text`` of each distinct one."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=object))
    return codes, pd.Series([text(str(u)) for u in uniques], dtype=object)


def _taken(codes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """``hashes[codes]``, 0 where a code is -1 (a video run has no siblings)."""
    out = np.zeros(len(codes), dtype=np.uint64)
    ok = codes >= 0
    out[ok] = hashes[codes[ok]]
    return out


#: protocol id -> digest, for run-page keys (one lookup per protocol, not per run)
_PROTOCOL_DIGESTS: dict[str, str] = {}


@dataclass
class SiteBuild:
    """What a build did: every page of the site (``names``: relative to ``out``, sorted), and
    how many run pages were built again or kept because their inputs had not changed."""

    out: Path
    names: list[str]
    runs_built: int
    runs_kept: int
    analysis: Analysis | None = None

    @functools.cached_property
    def pages(self) -> list[Path]:
        """Every page as a path (made when asked: 100,000 paths took a second of a
        rebuild)."""
        return [self.out / n for n in self.names]


def _unique_slugs(names: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for n in sorted(names):
        s = slug(n)
        while s in used:  # e.g. "A" and "a": second one gets a hash suffix
            s = f"{s}-{hashlib.sha1((n + s).encode()).hexdigest()[:4]}"
        used.add(s)
        out[n] = s
    return out


def _sorted_classes(names: Iterable[str]) -> list[str]:
    ns = list(names)
    if all(n.isdigit() for n in ns):
        return sorted(ns, key=int)
    return sorted(ns)


def _siblings(img: pd.DataFrame) -> dict[tuple[Any, ...], tuple[list[str], list[float]]]:
    """(label, dataset, protocol, seed) -> the classes of those image runs and their AUCs, in
    class order (numeric when every class of the group is a number, else text).

    One pass with numpy over the groups' row positions: a DataFrame sorted per group cost
    17 s for 10,000 runs."""
    out: dict[tuple[Any, ...], tuple[list[str], list[float]]] = {}
    if img.empty:
        return out
    cls = img["normal_class"].astype(str).to_numpy()
    num = pd.to_numeric(img["normal_class"], errors="coerce").to_numpy(dtype=np.float64)
    auc = img["auc"].to_numpy(dtype=np.float64)
    for k, idx in img.groupby(["label", "dataset", "protocol", "seed"], sort=True).indices.items():
        n = num[idx]
        order = (np.argsort(n, kind="stable") if not np.isnan(n).any()
                 else np.argsort(cls[idx], kind="stable"))
        pos = idx[order]
        out[k] = (cls[pos].tolist(), [float(v) for v in auc[pos]])
    return out


def _class_sort_key(col: pd.Series) -> pd.Series:
    if col.name == "normal_class":
        as_num = pd.to_numeric(col, errors="coerce")
        if as_num.notna().all():
            return as_num
        return col.astype(str)
    return col


def _other_protocols(a: Analysis) -> list[str]:
    if a.agg.empty:
        return []
    used = {(d, p) for d, p in a.ranking_blocks.items()}
    return sorted({f"{d} · {p}" for d, p in zip(a.agg["dataset"], a.agg["protocol"], strict=True)
                   if (d, p) not in used})


#: Column-name hints for sweep records written by the Ray sweep (``occbench sweep``).
_PARAM_PREFIXES = ("config/", "config.", "params/", "params.", "param_", "param.")
_OBJECTIVE_NAMES = ("objective", "val_objective", "val_auc", "validation_auc", "val_score")
_TEST_NAMES = ("test_auc", "test_auc_micro", "auc_test")


def _sweep_item(i: int, name: str, df: pd.DataFrame) -> dict[str, Any]:
    """One sweep table (``occbench sweep``: ``param_*``, ``val_auc``, ``test_auc``, ``best``...)
    as plots of each parameter against the objectives, and its top trials."""
    if "error" in df.columns and len(df.columns) == 1:
        return {"name": name, "error": str(df["error"].iloc[0]), "figs": [], "top": [],
                "columns": [], "n": 0, "objective": None, "test": None, "on_test": False,
                "meta": {}}
    params = sorted(str(c) for c in df.columns if str(c).startswith(_PARAM_PREFIXES))
    obj = [c for c in _OBJECTIVE_NAMES if c in df.columns] or \
          sorted(str(c) for c in df.columns if str(c).startswith("val") and
                 pd.api.types.is_numeric_dtype(df[c]))
    test = [c for c in _TEST_NAMES if c in df.columns]
    objectives = [*obj[:1], *test[:1]]
    on_test = bool("selected_on_test" in df.columns and df["selected_on_test"].fillna(False)
                   .astype(bool).any())
    figs = []
    for j, p in enumerate(params[:8]):
        if df[p].nunique(dropna=True) > 1 and objectives:
            figs.append(Markup(plots.sweep_figure(df, p, objectives, f"sweep-{i}-{j}")))
    extra = [c for c in ("best", "trial_error") if c in df.columns and df[c].notna().any()
             and not (c == "best" and not df[c].any())]
    show = [*params, *objectives, *extra] or [str(c) for c in df.columns[:8]]
    key = (test[:1] if on_test else obj[:1]) or objectives[:1]
    top = df.sort_values(key[0], ascending=False, kind="stable") if key else df
    rows = [[r.get(c) for c in show] for r in _records(top.head(10))]
    meta = {c: str(df[c].iloc[0]) for c in ("method", "dataset", "selected_on")
            if c in df.columns and len(df)}
    return {"name": name, "error": None, "figs": figs, "columns": show, "top": rows,
            "n": len(df), "objective": objectives[0] if objectives else None,
            "test": test[0] if test else None, "on_test": on_test, "meta": meta}


def _warn_stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _store_of(store: RunStore | str | Path) -> RunStore:
    st = store if isinstance(store, RunStore) else RunStore(store)
    if not st.runs_dir.exists():
        raise SiteError(f"{st.path} is not a run store (no runs/ folder); run `occbench run` "
                        "first or point --store at one")
    return st


def _write_leaderboard(st: RunStore, a: Analysis, dst: Path) -> None:
    """``leaderboard.csv`` and ``leaderboard.md`` (the table, then the failed jobs) into dst."""
    write_board(st, dst, agg=a.agg)
    md = dst / "leaderboard.md"
    md.write_text(md.read_text(encoding="utf-8").rstrip("\n") + "\n\n"
                  + failures_markdown(a.failures), encoding="utf-8")


def build_site(store: RunStore | str | Path, out: str | Path,
               published_path: str | Path | None = None,
               options: SiteOptions | None = None,
               warn: Callable[[str], None] | None = None) -> list[Path]:
    """Build the whole site from ``store`` into ``out``; returns its HTML pages."""
    return build(store, out, published_path, options, warn=warn).pages


def build(store: RunStore | str | Path, out: str | Path,
          published_path: str | Path | None = None, options: SiteOptions | None = None,
          analysis: Analysis | None = None,
          warn: Callable[[str], None] | None = None) -> SiteBuild:
    """Build the site (see :func:`build_site`); run pages whose inputs did not change since the
    last build into ``out`` are kept, the others built in parallel processes. ``analysis``:
    the store's analysis when the caller has it already (the store is then not read again).

    ``out`` is new, empty, or an earlier build (see :func:`site_output`: only the files that
    build listed are replaced or deleted). Run records with a job id that is not 20 hex digits
    are left out, each with one line to ``warn`` (default: stderr).
    """
    st = _store_of(store)
    opts = options or SiteOptions()
    outp = Path(out)
    w = warn or _warn_stderr
    with site_output(outp) as so:
        stage = so.stage
        previous = _read_manifest(outp) if MANIFEST in so.prev else {}
        # the previous build's rows of unchanged runs: a rebuild reads only what changed
        cache_in = outp / RUNS_CACHE if RUNS_CACHE in so.prev else None
        a = analysis or analyze(st, published_path,
                                n_boot=opts.n_boot if opts.n_boot > 0 else 200, warn=w,
                                cache_in=cache_in, cache_out=stage / RUNS_CACHE)
        _copy_static(stage)
        data = stage / "data"
        write_tables(a, data)
        a.agg.to_csv(data / "leaderboard.csv", index=False, lineterminator="\n")
        (data / "leaderboard.md").write_text(
            markdown(display_table(a.agg)) + "\n" if not a.agg.empty else "No runs yet.\n")
        _write_leaderboard(st, a, stage)
        b = _Builder(st, stage, a, opts)
        keys: dict[str, str] = {}
        b.previous, b.prev_files, b.keep, b.keys = previous, so.prev, so.keep, keys
        b.store_out = outp
        b.plain = _PlainFiles(outp)
        # (what the keyed pages but run pages depend on: the run-list pages)
        b.page_common = json.dumps([code_fingerprint("dataset_runs.html", "site.py"), b.mslug,
                                    b.dslug, bool(a.sweeps)])
        b.overview()
        for ds in sorted(b.dslug):
            b.dataset(ds)
        for m in sorted(b.mslug):
            b.method(m)
        ctx = b.run_context()
        common = json.dumps([ctx.common_key(), [str(c) for c in a.runs.columns]])
        # an unchanged page of the previous build stays where it is (the marker keeps it)
        kept = b.keep_unchanged_all([(f"runs/{jid}.html", key)
                                     for jid, key in _run_page_keys(st, common, b)])
        rows = [i for i, k in enumerate(kept) if not k]
        todo: list[_RunItem] = b.run_items(rows)
        if todo:
            ctx = replace(ctx, verified={
                j: k for j in (str(it[0]["job_id"]) for it in todo)
                if (k := st._verified.get(j)) is not None})
        built = _build_run_pages(ctx, todo, opts.jobs)
        _write_manifest(stage, keys)
        if a.sweeps:
            b.sweeps()
        rels = {Path(p).relative_to(stage).as_posix() for p in [*b.written, *built]}
    # sorted as text (sorting 100,000 Path objects took seconds)
    names = sorted({*rels, *keys})
    n_run_pages = sum(1 for rel in keys if rel.startswith("runs/"))
    return SiteBuild(outp, names, len(built), n_run_pages - len(built), a)


def build_tables(store: RunStore | str | Path, out: str | Path,
                 published_path: str | Path | None = None, n_boot: int = 1000,
                 warn: Callable[[str], None] | None = None,
                 analysis: Analysis | None = None) -> list[Path]:
    """``occbench board --no-site``: leaderboard.csv/.md and the analysis CSVs into ``out``
    (same folder rules as :func:`build`); returns the files written. A site an earlier build
    left in ``out`` stays as it is (it was deleted as files of the previous build)."""
    st = _store_of(store)
    outp = Path(out)
    with site_output(outp) as so:
        so.keep |= so.prev  # every earlier file this build does not write again
        a = analysis or analyze(st, published_path, n_boot=n_boot or 200,
                                warn=warn or _warn_stderr)
        _write_leaderboard(st, a, so.stage)
        write_tables(a, so.stage)
        rels = sorted(p.relative_to(so.stage) for p in so.stage.rglob("*") if p.is_file())
    return [outp / r for r in rels]

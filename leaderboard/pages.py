"""One page of the board from its inputs: the jinja environment and its filters, the run
pages (rendered in the building process or in parallel build processes), and the fingerprint of
the code a page is made by.

A run page is a function of its run's files, its row in the tables and the code here (with
:mod:`plots`, :mod:`stats`, the store's reader, the protocols' ROC code and the templates it
uses): that code, not the
rest of the site's, is in its key (:func:`code_fingerprint`), so a change to the overview or
the dataset pages does not make 100,000 run pages again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from occbench.harness.store.paths import UnsafePathError, inside, is_job_id, safe_name
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard import plots
from occbench.leaderboard.stats import bootstrap_per_video, stable_seed

# ----------------------------------------------------------------------------------------------
# formatting helpers (also jinja filters)
# ----------------------------------------------------------------------------------------------


def _nan(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, float | np.floating) and math.isnan(v))
    except TypeError:
        return False


def pct(v: Any, nd: int = 2) -> str:
    """A fraction as a percentage string; ``—`` when missing."""
    return "—" if _nan(v) else f"{float(v) * 100:.{nd}f}"


def ci(lo: Any, hi: Any) -> str:
    return "—" if _nan(lo) or _nan(hi) else f"[{pct(lo)}, {pct(hi)}]"


def _number(v: Any) -> float | str:
    """``v`` as a float, or the text to show instead (missing, a flag, not a number)."""
    if _nan(v):
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else ""
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def num(v: Any, nd: int = 1) -> str:
    """A number with thousands separators; ``—`` when missing; other values as text."""
    f = _number(v)
    if isinstance(f, str):
        return f
    if abs(f) >= 1e6:
        return f"{f:.3g}"
    return f"{f:,.{nd}f}"


def sig(v: Any, digits: int = 4) -> str:
    """A parameter value as written: ``10`` not ``10.0000``, ``1e-05`` not ``0.0000``."""
    f = _number(v)
    if isinstance(f, str):
        return f
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.{digits}g}"


def sortval(v: Any) -> str:
    """``data-v`` attribute for the sortable tables: a number, or empty for missing."""
    if _nan(v):
        return ""
    if isinstance(v, bool | np.bool_):
        return str(int(v))
    if isinstance(v, int | float | np.integer | np.floating):
        return repr(round(float(v), 8))
    return str(v)


def pval(v: Any) -> str:
    if _nan(v):
        return "—"
    return "< 0.001" if float(v) < 0.001 else f"{float(v):.3f}"


#: File-name slug of a method label or dataset name
#: (see :func:`occbench.harness.store.paths.safe_name`).
slug = safe_name


# ----------------------------------------------------------------------------------------------
# the jinja environment, and what a page is made by
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteOptions:
    """Knobs of the build: bootstrap replicates per video run, points per run page, processes."""

    n_boot: int = 1000
    timeline_points: int = 6000
    log_chars: int = 4000
    jobs: int = 0  # processes building run pages; 0 = every core this process may use


def _templates_dir() -> Path:
    """``occbench.site``'s ``templates/`` folder."""
    import occbench.site

    return Path(occbench.site.__file__).resolve().parent / "templates"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(_templates_dir()),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters.update(pct=pct, ci=ci, num=num, sig=sig, sv=sortval, pval=pval, slug=slug)
    return env


def _templates_used(template: str) -> list[str]:
    """``template`` and every template it extends, includes or imports, recursively (found in
    their source by jinja2), sorted."""
    from jinja2 import meta

    env = _env()
    seen: set[str] = set()
    todo = [template]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        assert env.loader is not None
        source = env.loader.get_source(env, name)[0]
        for ref in meta.find_referenced_templates(env.parse(source)):
            if ref is None:  # a computed name: every template might be used
                return sorted(t for t in env.list_templates() if t.endswith(".html"))
            todo.append(ref)
    return sorted(seen)


@functools.lru_cache(maxsize=8)
def code_fingerprint(template: str, *modules: str) -> str:
    """Digest of the code and the templates a page made from ``template`` is made by: this
    module, :mod:`plots`, :mod:`stats`, the store's reader, the ROC code of the protocols
    (``roc_points``), the ``modules`` named (files of
    this package, e.g. ``"site.py"`` for pages whose rows it orders), and ``template`` with
    the templates it uses (not the others). A new occbench rebuilds exactly those pages."""
    import occbench.harness.scoring.protocols as protocols
    import occbench.harness.store.runstore as runstore
    import plotly

    h = hashlib.sha256(plotly.__version__.encode())
    here = Path(__file__).resolve().parent
    tpl = _templates_dir()
    for f in (here / "pages.py", here / "plots.py", here / "stats.py", Path(runstore.__file__),
              Path(protocols.__file__), *(here / m for m in modules),
              *(tpl / t for t in _templates_used(template))):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _render(env: Environment, out: Path, rel: str, template: str, mslug: dict[str, str],
            dslug: dict[str, str], has_sweeps: bool, **ctx: Any) -> Path:
    root = "../" * rel.count("/")
    html = env.get_template(template).render(root=root, mslug=mslug, dslug=dslug,
                                             has_sweeps=has_sweeps, **ctx)
    p = inside(out, out / rel)  # rel is built from slugs and checked job ids
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(html, encoding="utf-8")
    return out / rel


@dataclass(frozen=True)
class _RunContext:
    """What every run page needs besides its own run (sent once to each build process)."""

    store: str
    protocol: str | Sequence[str] | None
    out: str
    opts: SiteOptions
    mslug: dict[str, str]
    dslug: dict[str, str]
    has_sweeps: bool
    #: job id -> the stat key of run files the builder verified moments ago (a build process
    #: then reads them without hashing them again; a file changed since is verified anew)
    verified: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def common_key(self) -> str:
        # the number of processes does not change a page
        return json.dumps([code_fingerprint("run.html"), repr(replace(self.opts, jobs=0)),
                           self.has_sweeps, self.protocol], default=str)


_RunItem = tuple[dict[str, Any], tuple[list[str], list[float]] | None]


class _RunPages:
    """Renders run pages (in the building process or in a worker process)."""

    def __init__(self, ctx: _RunContext) -> None:
        self.ctx, self.env = ctx, _env()
        self.store = RunStore(ctx.store, protocol=ctx.protocol)
        self.store._verified.update(ctx.verified)
        self.out, self.opts = Path(ctx.out), ctx.opts

    def run(self, row: dict[str, Any], sib: tuple[list[str], list[float]] | None) -> Path:
        jid = str(row["job_id"])
        if not is_job_id(jid):  # analyze() drops these; never let one become a path
            raise UnsafePathError(f"run page for job id {jid[:60]!r}: not a job id")
        run = self.store.read_run(jid, row["protocol"])
        rec = run.record
        videos = run.per_video()
        score, label = run.items()
        kept = ~np.isnan(score)
        # the kept frames sorted once, for the ROC and the bootstrap (two sorts of 24,000
        # scores were a tenth of a video page)
        order = np.argsort(score[kept], kind="stable")
        figs = [plots.roc_figure(score, label, "roc", order=order)]
        boot = None
        if row["modality"] == "video":
            per_video_auc = (rec.get("metrics") or {}).get("per_video_auc") or {}
            figs.insert(0, plots.score_timeline_figure(videos, "timeline",
                                                       self.opts.timeline_points,
                                                       per_video_auc))
            if self.opts.n_boot > 0 and len(np.unique(label[kept])) == 2:
                # the point estimates are the record's: not computed again per page; the
                # kept frames in ``videos`` order are ``score[kept]`` (run.items())
                boot = bootstrap_per_video(videos, self.opts.n_boot,
                                           stable_seed(jid, "videos"),
                                           auc=row["auc"], eer=row["eer"], order=order)
        else:
            classes, aucs = sib or ([], [])
            figs.append(plots.class_bars_figure(
                classes, aucs, str(row["normal_class"]), "class-bars",
                f"AUROC per normal class — {row['label']}, seed {row['seed']}"))
            figs.append(plots.histogram_figure(score, label, "hist"))
        per_video = (rec.get("metrics") or {}).get("per_video_auc") or {}
        log = self.store.log(jid)
        if len(log) > self.opts.log_chars:
            log = "… (truncated)\n" + log[-self.opts.log_chars:]
        return _render(self.env, self.out, f"runs/{jid}.html", "run.html", self.ctx.mslug,
                       self.ctx.dslug, self.ctx.has_sweeps, run=row, record=json.dumps(
                           rec, indent=1, sort_keys=True, default=str),
                       figs=[Markup(f) for f in figs],
                       boot=boot.as_dict() if boot else None, per_video=sorted(per_video.items()),
                       excluded=(rec.get("metrics") or {}).get("excluded_videos") or [],
                       log=log, protocol=rec.get("protocol") or {})


_WORKER: _RunPages | None = None


def _init_worker(ctx: _RunContext) -> None:
    global _WORKER
    _WORKER = _RunPages(ctx)


def _build_batch(items: list[_RunItem]) -> list[str]:
    assert _WORKER is not None, "run-page worker not initialised"
    return [str(_WORKER.run(row, sib)) for row, sib in items]


#: Run pages per task sent to a build process (fewer round trips, still balanced).
_BATCH = 32


def _build_run_pages(ctx: _RunContext, todo: list[_RunItem], jobs: int) -> list[Path]:
    """Build the ``todo`` run pages, in ``jobs`` processes when there are enough of them."""
    n = jobs or len(os.sched_getaffinity(0))
    n = min(n, math.ceil(len(todo) / _BATCH))
    if n <= 1:
        pages = _RunPages(ctx)
        return [pages.run(row, sib) for row, sib in todo]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    batches = [todo[i:i + _BATCH] for i in range(0, len(todo), _BATCH)]
    # spawn, not fork: the parent holds pyarrow and BLAS thread pools a fork would copy mid-use
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(ctx,)) as ex:
        return [Path(p) for batch in ex.map(_build_batch, batches) for p in batch]



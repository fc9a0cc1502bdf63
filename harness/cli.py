"""The ``occbench`` command line (typer)."""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(
    help="occbench: benchmark one-class anomaly detectors (images and video) and build a "
         "leaderboard.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
store_app = typer.Typer(help="Manage run stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
console = Console()
err = Console(stderr=True)

StoreOpt = Annotated[Path, typer.Option("--store", "-s", help="Run store folder.")]
DataRootOpt = Annotated[
    str | None,
    typer.Option("--data-root", help="Folder holding the datasets (else $OCCBENCH_DATA_ROOT)."),
]


def _data_root(value: str | None) -> str | None:
    try:
        mod = importlib.import_module("occbench.harness.dataroot")
    except ImportError:
        import os

        return value or os.environ.get("OCCBENCH_DATA_ROOT")
    root = mod.resolve_data_root(value)
    return None if root is None else str(root)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(msg)}")
    return typer.Exit(code)


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def make_runner(name: str, device: str, address: str | None, max_concurrent: int | None,
                sealed: str = "auto") -> Any:
    """Build a runner by name (``serial``; ``ray`` when the Ray runner is installed)."""
    from occbench.harness.runner import SerialRunner

    if name == "serial":  # "auto" means cpu here: the serial runner does no GPU placement
        return SerialRunner(device="cpu" if device == "auto" else device, sealed=sealed)
    if name == "ray":
        mod = importlib.import_module("occbench.harness.ray_runner")
        return mod.RayRunner(address=address, max_concurrent=max_concurrent, device=device,
                             sealed=sealed)
    raise _fail(f"unknown runner {name!r} (serial, ray)")


def default_runner() -> str:
    try:
        importlib.import_module("occbench.harness.ray_runner")
        return "ray"
    except ImportError:
        return "serial"


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="Spec TOML file, or a built-in spec name (quick).")],
    store: StoreOpt = Path("runs"),
    data_root: DataRootOpt = None,
    runner: Annotated[str | None, typer.Option(help="serial or ray (default: ray if available)."
                                               )] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (auto, ray://...); "
                                                "default: start an embedded local Ray.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Most jobs in flight at once.")] = None,
    device: Annotated[str, typer.Option(help="auto (Ray: GPU jobs get the GPUs their method "
                                        "declares when there are any), cpu or cuda.")] = "auto",
    board: Annotated[bool, typer.Option(help="Print the aggregated table at the end.")] = True,
    check_data: Annotated[bool, typer.Option(help="Check each dataset before any job starts."
                                             )] = True,
    sealed: Annotated[bool | None, typer.Option(
        "--sealed/--unsealed", help="Run methods in the bubblewrap sandbox (--sealed: fail if "
        "it is unavailable) or in the worker (--unsealed). Default: sealed where available, "
        "else unsealed with a warning.")] = None,
) -> None:
    """Run every job of SPEC that is not already in the store, then print the table."""
    from occbench.harness.driver import run_jobs
    from occbench.harness.spec import SpecError, expand, load_spec
    from occbench.harness.store import RunStore, StoreError

    root = _data_root(data_root)
    try:
        sp = load_spec(spec)
        plan = expand(sp, root)
    except (SpecError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    if check_data:
        _precheck(sp, root)
    for s in plan.skipped:
        console.print(f"[dim]skipped: {escape(s)}[/dim]")
    if address is None:  # an existing cluster may have GPUs this machine lacks
        from occbench.harness.spec import split_requires_gpu

        here, need_gpu = split_requires_gpu(plan.jobs)
        if need_gpu:
            console.print(f"{len(need_gpu)} jobs need a GPU and this machine has none: not "
                          "attempted (run them on a GPU node, or a cluster with --address)")
            plan.jobs = here
    st = RunStore(store)
    try:
        st.init()
    except StoreError as exc:
        raise _fail(str(exc)) from None
    todo = sum(1 for j in plan.jobs if not st.has(j.job_id))
    console.print(f"spec [bold]{escape(sp.name)}[/bold]: {len(plan.jobs)} jobs, "
                  f"{len(plan.jobs) - todo} already in {escape(str(store))}, {todo} to run")
    seal_mode = seal_mode_checked(sealed)
    rname = runner or default_runner()
    r = make_runner(rname, device, address, max_concurrent, seal_mode)
    t0 = time.perf_counter()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console, transient=False, disable=not todo) as prog:
        task = prog.add_task("jobs", total=todo, status="")
        counts = {"ok": 0, "failed": 0, "running": 0, "gone": 0}  # gone: held by another driver

        def progress(event: str, job: Any, out: Any) -> None:
            if event == "start":
                counts["running"] += 1
            elif event == "locked":
                counts["gone"] += 1
                prog.update(task, total=max(todo - counts["gone"], 0))
            elif event in ("ok", "failed"):
                counts[event] += 1
                counts["running"] = max(counts["running"] - 1, 0)
                prog.advance(task)
                if event == "failed":
                    e = (out.error or {}) if out is not None else {}
                    prog.console.print(f"[red]failed[/red] {escape(job.display)}: "
                                       f"{escape(str(e.get('type')))}: "
                                       f"{escape(_one_line(e.get('message')))}")
            queued = todo - counts["gone"] - counts["ok"] - counts["failed"] - counts["running"]
            prog.update(task, status=f"ok {counts['ok']} · running {counts['running']} · failed "
                                     f"{counts['failed']} · queued {max(queued, 0)}")

        try:
            summary = run_jobs(plan.jobs, st, r, root, progress)
        finally:
            r.close()
    wall = time.perf_counter() - t0
    console.print(f"ran {summary.ran} jobs in {wall:.1f} s: {summary.ok} ok, {summary.failed} "
                  f"failed, {summary.already_done} already done"
                  + (f", {summary.skipped_locked} held by another driver"
                     if summary.skipped_locked else ""))
    for disp, why in summary.failures:
        err.print(f"  [red]failed[/red] {escape(disp)}: {escape(_one_line(why))}")
    if summary.stop_reason:
        err.print(f"[yellow]stopped:[/yellow] {escape(summary.stop_reason)}")
    if board:
        _print_board(st)
    if summary.failed or summary.stop_reason:
        raise typer.Exit(1)


def seal_mode_checked(sealed: bool | None) -> str:
    """Probe the sandbox before the first job: ``--sealed`` fails closed (exit 2), the default
    warns in one line when it has to run unsealed. Returns the mode for the runner."""
    from occbench.harness import sandbox

    mode = "require" if sealed else "off" if sealed is False else "auto"
    try:
        ok, p = sandbox.resolve(mode, warn=False)
    except sandbox.SandboxUnavailable as exc:
        raise _fail(str(exc)) from None
    if mode == "auto" and not ok:
        err.print(f"[yellow]warning:[/yellow] running UNSEALED (methods can reach files and "
                  f"the network): {escape(p.why)}")
    elif ok:
        console.print(f"[dim]methods run sealed ({escape(str(p.by))})[/dim]")
    return mode


def _one_line(msg: object, limit: int = 300) -> str:
    """First line of a failure message, shortened for the live display."""
    lines = str(msg or "").strip().splitlines()
    return lines[0][:limit] if lines else ""


def _precheck(sp: Any, root: str | None) -> None:
    try:
        mod = importlib.import_module("occbench.harness.cli_data")
    except ImportError:
        return
    check = getattr(mod, "check_dataset", None)
    if check is None:
        return
    seen = set()
    for d in sp.all_datasets():
        key = json.dumps([d["name"], d.get("params") or {}], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        rep = check(d["name"], root, d.get("params") or {})
        if not rep.ok:
            raise _fail(f"dataset {d['name']!r} failed its check:\n  " + "\n  ".join(rep.errors))


def _print_board(st: Any, runs: Any = None, agg: Any = None) -> None:
    from occbench.leaderboard.table import aggregate, display_table, runs_frame

    # the board passes the tables it has: the store is read once per command
    runs = runs_frame(st) if runs is None else runs
    agg = aggregate(runs) if agg is None else agg
    df = display_table(agg)
    if df.empty:
        console.print("no runs in the store yet")
        return
    if runs.attrs.get("superseded"):
        console.print(f"{runs.attrs['superseded']} superseded run(s) left out: the same entry, "
                      "class and seed run again with a newer method version or changed data "
                      "(the newest run counts; `occbench export` lists them all)")
    incomplete = agg.attrs.get("incomplete_seeds", 0)
    if incomplete:
        console.print(f"{incomplete} seed(s) left out of the means: they lack some of their "
                      "entry's normal classes (still to run, or failed)")
    t = Table(title="occbench — mean ± std over seeds (AUC: micro frame AUC for video, "
                    "class-mean AUROC for images)")
    for c in df.columns:
        t.add_column(str(c), justify="right" if c not in ("dataset", "method", "protocol")
                     else "left")
    for row in df.itertuples(index=False):
        t.add_row(*(escape(str(v)) for v in row))
    console.print(t)


# --------------------------------------------------------------------------------------------
# board, export, list, validate, store
# --------------------------------------------------------------------------------------------


@app.command()
def export(
    store: StoreOpt = Path("runs"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("export"),
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Write per-run metrics (runs.*) and per-item scores with labels (scores.*)."""
    from occbench.harness.export import export_store

    if fmt not in ("csv", "parquet"):
        raise _fail("--format must be csv or parquet")
    files = export_store(store, out, fmt)
    for f in files:
        console.print(f"wrote {escape(str(f))}")


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="methods, datasets or protocols")],
) -> None:
    """List registered methods, datasets or scoring protocols."""
    from occbench.harness import registry
    from occbench.harness.protocols import protocols

    t = Table()
    if what == "protocols":
        for c in ("id", "modality", "normalize", "border", "smooth", "description"):
            t.add_column(c)
        for p in protocols():
            t.add_row(p.id, p.modality, p.normalize, p.border, str(p.smooth_sigma),
                      escape(p.description))
        console.print(t)
        return
    if what not in ("methods", "datasets"):
        raise _fail("list what? methods, datasets or protocols")
    reg: Any = registry.methods if what == "methods" else registry.datasets
    for c in ("name", "modality", "version", "package", "description"):
        t.add_column(c)
    for e in reg.entries():
        mods = sorted(e.obj.modalities) if what == "methods" else [e.obj.modality]
        t.add_row(escape(e.name), ",".join(mods), escape(str(e.obj.version)), escape(e.source),
                  escape(str(getattr(e.obj, "description", ""))))
    console.print(t)
    for name, why in reg.broken().items():
        err.print(f"[red]broken plugin[/red] {escape(name)}: {escape(why)}")


@app.command()
def validate(
    plugin: Annotated[str, typer.Argument(help="Registered method name, or module:Class.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p",
                                                    help="Parameter as key=JSON value.")] = None,
    full: Annotated[bool, typer.Option(help="Use the method's full settings, not fast ones."
                                       )] = False,
) -> None:
    """Run the conformance kit on a method plugin; exit 1 if any check fails."""
    from occbench.harness.conformance import check_method

    params = parse_params(param or [])
    try:
        report = check_method(plugin, params, fast=not full)
    except (LookupError, ImportError, AttributeError, TypeError) as exc:
        raise _fail(str(exc)) from None
    console.print(escape(report.format()))
    if not report.ok:
        raise typer.Exit(1)


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise _fail(f"parameter {it!r} is not key=value")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@store_app.command("merge")
def store_merge(
    sources: Annotated[list[Path], typer.Argument(help="Run stores to merge from.")],
    into: Annotated[Path, typer.Option("--into", help="Destination store.")],
    compact: Annotated[bool, typer.Option(
        "--compact", help="Store image runs' raw scores as dense ranks (exact for every image "
                          "metric, a fraction of the size; for the committed results/).")] = False,
    self_reported: Annotated[bool, typer.Option(
        "--self-reported", help="The runs were made elsewhere (not by CI or a maintainer from "
                                "the plugin's code): the board marks them so.")] = False,
) -> None:
    """Copy good runs missing from --into out of each source store, with their labels and
    metrics (content-addressed: no repeats; bad entries are reported and not copied)."""
    from occbench.harness.store import RunStore, StoreError

    dst = RunStore(into)
    for s in sources:
        src = RunStore(s)
        if not src.runs_dir.exists():
            raise _fail(f"{s} is not a run store (no runs/ folder)")
        try:
            copied, present = dst.merge_from(src, compact=compact, self_reported=self_reported)
        except StoreError as exc:
            raise _fail(str(exc)) from None
        console.print(f"{escape(str(s))}: {copied} runs copied, {present} already present")


@store_app.command("prune")
def store_prune(
    store: StoreOpt = Path("runs"),
    spec: Annotated[list[str] | None, typer.Option(
        "--spec", help="Also prune runs that no longer belong to these specs as they expand "
                       "now (repeatable).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Data root, to expand --spec.")] = None,
    apply: Annotated[bool, typer.Option(
        "--apply", help="Move the runs to STORE/pruned/ (default: only list them).")] = False,
) -> None:
    """List, or with --apply set aside, runs that no table counts: runs superseded by a newer
    run of the same entry, class and seed (newer method version or changed data), and with
    --spec the runs none of the specs expands to any more. Nothing is deleted."""
    from occbench.harness.spec import SpecError, spec_job_ids
    from occbench.harness.store import RunStore
    from occbench.leaderboard.table import runs_frame

    st = RunStore(store)
    if not st.runs_dir.exists():
        raise _fail(f"{store} is not a run store (no runs/ folder)")
    runs = runs_frame(st, include_superseded=True)
    why = {j: "superseded by a newer run" for j in runs.loc[runs["superseded"], "job_id"]}
    if spec:
        try:
            keep = spec_job_ids(spec, data_root)
        except SpecError as exc:
            raise _fail(str(exc)) from None
        for j in st.job_ids():
            if j not in keep:
                why.setdefault(j, "not in the specs any more")
    counts = Counter(why.values())
    summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "nothing"
    if not apply:
        console.print(f"{len(why)} of {len(st.job_ids())} runs would be set aside ({summary}); "
                      "run again with --apply to move them to "
                      f"{escape(str(st.pruned_dir))}/")
        return
    moved = sum(st.set_aside(j) for j in sorted(why))
    console.print(f"set aside {moved} of {len(why)} runs ({summary}) in "
                  f"{escape(str(st.pruned_dir))}/; {len(st.job_ids())} runs remain")


@store_app.command("status")
def store_status(store: StoreOpt = Path("runs")) -> None:
    """Count finished and failed runs; list failures with their reason."""
    from occbench.harness.store import RunStore

    st = RunStore(store)
    fails = st.failures()
    console.print(f"{len(st.job_ids())} finished runs, {len(fails)} failed jobs")
    for f in fails:
        e = f.get("error") or {}
        console.print(f"  [red]{escape(f['job_id'])}[/red] {escape(str(f['job'].get('method')))} "
                      f"× {escape(str(f['job'].get('dataset')))}: "
                      f"{escape(str(e.get('type')))}: {escape(str(e.get('message'))[:200])}")


# Sub-commands contributed by other modules of the harness (data, refresh, sweep, site...).
for _mod in ("cli_data", "cli_ray", "cli_board", "cli_store"):
    try:
        importlib.import_module(f"occbench.harness.{_mod}").register(app)
    except ImportError as _exc:
        if getattr(_exc, "name", "") != f"occbench.harness.{_mod}":
            raise


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

"""The ``occbench`` command line (typer).

Start-up is kept cheap (``occbench --help``, completion): this module imports only typer and
rich at load time; numpy, pandas, scikit-learn, torch and Ray are imported inside the commands
that need them.
"""

from __future__ import annotations

import importlib
import sys
import time
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

import typer
from occbench.harness.cli.ui import (
    OFF_TERMINAL_WIDTH,
    console,
    err,
    escape,
    make_console,
    real_console,
    table,
)

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="occbench: benchmark one-class anomaly detectors (images and video) and build a "
         "leaderboard.",
    no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
    # plain (click) help: typer's rich help imports rich.markdown & co. and alone makes
    # `occbench --help` ~2.5x slower than importing typer (bench/bench_cli_startup.py)
    rich_markup_mode=None,
)
store_app = typer.Typer(help="Manage run stores.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(store_app, name="store")

__all__ = ["OFF_TERMINAL_WIDTH", "app", "console", "err", "escape", "main", "make_console",
           "table"]


class OutFormat(str, Enum):
    """Output format of listing commands."""

    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


StoreOpt = Annotated[Path, typer.Option("--store", "-s", help="Run store folder.")]
TimeLimitOpt = Annotated[
    str | None,
    typer.Option("--time-limit", help="Time limit of every job, overriding the spec: seconds "
                 "(7200) or 90s, 30m, 2h; 0 or none: no limit. Default: the spec's "
                 "time_limit_s, else 2h."),
]
RetryFailedOpt = Annotated[
    bool,
    typer.Option("--retry-failed", help="Also rerun jobs that failed with an error of the "
                 "method itself (not rerun by default: they fail the same way again)."),
]
DataRootOpt = Annotated[
    str | None,
    typer.Option("--data-root", help="Folder holding the datasets (else $OCCBENCH_DATA_ROOT, "
                                     "or data_root in ~/.config/occbench/config.toml)."),
]
FormatOpt = Annotated[OutFormat, typer.Option(
    "--format", "-f", help="table (for people), json, csv or md (for scripts and docs).")]


def _data_root(value: str | None) -> str | None:
    from occbench.harness.dataroot import resolve_data_root

    try:
        root = resolve_data_root(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return None if root is None else str(root)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    """Print one ``error:`` line (a multi-line message is joined with "; ") and return the exit
    to raise (status 2: bad input)."""
    one = "; ".join(s.strip() for s in str(msg).splitlines() if s.strip())
    err.print(f"[red]error:[/red] {escape(one)}", soft_wrap=True)  # never re-wrapped
    return typer.Exit(code)


def store_for_reading(path: Path, protocol: list[str] | None = None, **kw: Any) -> Any:
    """The run store at ``path`` (viewed under ``protocol``: ids, one per modality; ``kw`` go
    to :class:`RunStore`), or a clean exit naming the fix when there is none or its format is
    not this version's. Every command that reads a store opens it here."""
    from occbench.harness.store.runstore import RunStore, StoreError

    if path.exists() and not path.is_dir():
        raise _fail(f"--store {path} is a file, not a run store folder; give the folder that "
                    "`occbench run --store` wrote")
    st = RunStore(path, protocol=protocol, **kw) if protocol else RunStore(path, **kw)
    if not st.runs_dir.is_dir():
        raise _fail(f"{path} is not a run store (no runs/ folder); run `occbench run SPEC "
                    f"--store {path}` first, or fix --store")
    try:
        st.check_schema()
    except StoreError as exc:
        raise _fail(str(exc)) from None
    return st


def store_for_writing(path: Path) -> Any:
    """The run store at ``path``, created if new; a clean exit when it cannot be one."""
    from occbench.harness.store.runstore import RunStore, StoreError

    if path.exists() and not path.is_dir():
        raise _fail(f"--store {path} is a file, not a folder; give a new folder or an occbench "
                    "store")
    st = RunStore(path)
    try:
        st.init()
    except (StoreError, OSError) as exc:
        raise _fail(str(exc)) from None
    return st


def emit(rows: list[dict[str, Any]], fmt: OutFormat, title: str | None = None,
         columns: list[str] | None = None) -> None:
    """Print ``rows`` as a rich table, or as JSON / CSV / Markdown on stdout (no markup)."""
    import csv
    import io
    import json

    cols = columns or (list(rows[0]) if rows else [])
    if fmt == OutFormat.json:
        sys.stdout.write(json.dumps(rows, indent=1, default=str) + "\n")
    elif fmt == OutFormat.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({c: ("" if r.get(c) is None else r.get(c)) for c in cols} for r in rows)
        sys.stdout.write(buf.getvalue())
    elif fmt == OutFormat.md:
        def cell(v: Any) -> str:
            return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        t = table(title=title)
        for c in cols:
            t.add_column(escape(str(c)), overflow="fold")
        for r in rows:
            t.add_row(*(escape("" if r.get(c) is None else str(r.get(c))) for c in cols))
        console.print(t)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("occbench")
        except PackageNotFoundError:  # a raw checkout that was never pip-installed
            v = "0+unknown"
        typer.echo(f"occbench {v}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """occbench: benchmark one-class anomaly detectors (images and video), build a leaderboard.

    Start with `occbench run quick --store runs/quick`.
    """


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


RUNNERS = ("serial", "ray")


def check_runner(value: str | None) -> str | None:
    """``--runner``'s check, as the command line is parsed (before any spec or store is
    touched): one of :data:`RUNNERS`, or None for the default."""
    if value is not None and value not in RUNNERS:
        from occbench.harness.registry import did_you_mean

        hint = did_you_mean(value, RUNNERS, n=1, cutoff=0.6)
        raise typer.BadParameter(f"unknown runner {value!r}{hint} (use serial or ray)")
    return value


#: ``--runner`` of run, refresh and sweep.
RunnerOpt = Annotated[str | None, typer.Option(
    help="serial or ray (default: ray if available).", callback=check_runner)]


def make_runner(name: str, device: str, address: str | None, max_concurrent: int | None,
                sealed: str = "auto") -> Any:
    """Build a runner by name (``serial``; ``ray`` when the Ray runner is installed)."""
    from occbench.harness.run.runner import SerialRunner

    if name == "serial":  # "auto" means cpu here: the serial runner does no GPU placement
        return SerialRunner(device="cpu" if device == "auto" else device, sealed=sealed)
    if name == "ray":
        mod = importlib.import_module("occbench.harness.run.ray_runner")
        try:
            return mod.RayRunner(address=address, max_concurrent=max_concurrent, device=device,
                                 sealed=sealed)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    raise _fail(f"unknown runner {name!r}: use --runner serial or --runner ray")


def default_runner() -> str:
    """``ray`` when Ray is installed, else ``serial`` (found without importing Ray: slow)."""
    import importlib.util

    return "ray" if importlib.util.find_spec("ray") is not None else "serial"


def _csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def adhoc_spec(methods: str | None, datasets: str | None, classes: str | None,
               seeds: str | None, fast: bool = False) -> dict[str, Any]:
    """The spec dict of ``run --methods a,b --datasets x,y [--classes c] [--seeds 0,1]``.

    ``--classes`` applies to image datasets (video datasets have none).
    """
    from occbench.harness import registry

    ms, ds = _csv_list(methods), _csv_list(datasets)
    if not ms or not ds:
        raise _fail("an ad-hoc run needs both --methods and --datasets (or give a SPEC file)")
    try:
        seed_list = [int(s) for s in _csv_list(seeds)] or [0]
    except ValueError:
        raise _fail(f"--seeds {seeds!r}: give integers separated by commas, e.g. --seeds 0,1,2"
                    ) from None
    cl = _csv_list(classes)
    dsets: list[dict[str, Any]] = []
    for d in ds:
        entry: dict[str, Any] = {"name": d}
        if cl:
            try:
                modality = registry.datasets.get(d).modality
            except registry.RegistryError as exc:
                raise _fail(str(exc)) from None
            if modality == "image":
                entry["classes"] = cl
        dsets.append(entry)
    return {"name": "adhoc", "seeds": seed_list, "methods": [{"name": m} for m in ms],
            "datasets": dsets, "fast": fast}


def _load_plan(spec: str | None, methods: str | None, datasets: str | None,
               classes: str | None, seeds: str | None, root: str | None,
               missing_ok: bool = False) -> tuple[Any, Any]:
    """(spec, plan) from a spec file/name or the ad-hoc options; user errors exit 2.
    ``missing_ok``: datasets without data are listed in ``plan.missing``, not an error."""
    from occbench.harness import registry
    from occbench.harness.run.spec import SpecError, expand, load_spec, spec_from_dict

    if spec is not None and (methods or datasets):
        raise _fail("give either a SPEC or --methods/--datasets, not both")
    if spec is None and not (methods or datasets):
        raise _fail("what to run? give a SPEC (a TOML file, or `quick`), or --methods and "
                    "--datasets for an ad-hoc run")
    try:
        sp = load_spec(spec) if spec is not None else spec_from_dict(
            adhoc_spec(methods, datasets, classes, seeds), "<command line>")
        if spec is not None and (classes or seeds):
            raise SpecError("--classes and --seeds go with --methods/--datasets; a SPEC sets "
                            "its own classes and seeds")
        plan = expand(sp, root, missing_ok=missing_ok)
    except (SpecError, registry.RegistryError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    return sp, plan


def check_methods(jobs: list[Any], root: str | None = None, seal_mode: str = "auto") -> None:
    """Run the fast conformance checks once per method that has jobs to run; a failing method
    stops the run before any job (exit 2), naming the check.

    Where the jobs run sealed, so do the checks (the same sandbox); otherwise they run here.
    """
    from occbench.harness.conformance import check_method, check_method_sealed
    from occbench.harness.run import sandbox

    sealed, probe = sandbox.resolve(seal_mode, warn=False)

    seen: dict[str, dict[str, Any]] = {}
    limits: dict[str, float] = {}
    for j in jobs:
        seen.setdefault(j.method, j.method_params)
        lim = getattr(j, "time_limit_s", None)
        limits[j.method] = min(limits.get(j.method, CHECK_LIMIT_S),
                               float(lim) if lim else CHECK_LIMIT_S)
    for name, params in seen.items():
        t0 = time.perf_counter()
        key = _conformance_key(name, params)
        if key is not None and (conformance_cache() / f"{key}.ok").exists():
            continue  # passed before, same code and parameters
        limit = max(1.0, limits.get(name, CHECK_LIMIT_S))
        box: dict[str, Any] = {}

        def check(name: str = name, params: dict[str, Any] = params,
                  limit: float = limit, box: dict[str, Any] = box) -> None:
            try:
                if sealed and probe.bwrap:
                    box["report"] = check_method_sealed(name, params, root, probe.bwrap,
                                                        timeout_s=limit)
                else:
                    box["report"] = check_method(name, params, fast=True, data_root=root)
            except Exception as exc:  # a plugin that cannot even be loaded
                box["error"] = exc

        # bounded: a method slower than the check's limit is not refused for it (its jobs
        # have their own time limits); the check is then inconclusive, and said so
        check()  # sealed: the subprocess is killed at the limit; unsealed: as before
        report = box.get("report")
        timed_out = (report is not None and any(
            r.check == "sealed_check" and "timed out" in str(r.message).lower()
            for r in report.results))
        if timed_out:
            console.print(f"[yellow]conformance of {escape(name)}: inconclusive (not done "
                          f"within {limit:.0f} s); its jobs run under their time limits; "
                          f"`occbench validate {escape(name)}` checks it in full[/yellow]")
            continue
        if "error" in box:
            err = box["error"]
            raise _fail(f"method {name!r} cannot be checked: {type(err).__name__}: {err}; "
                        f"see `occbench validate {name}`") from None
        assert report is not None
        fails = report.failures()
        if fails:
            f = fails[0]
            msg = _one_line(f.message)
            raise _fail(f"method {name!r} fails the conformance check {f.check!r} "
                        f"({f.modality}){': ' + msg if msg else ''}; fix it (details: "
                        f"`occbench validate {name}`) or pass --no-check-methods")
        console.print(f"[dim]conformance of {escape(name)}: ok ("
                      f"{'sealed, ' if sealed else ''}{time.perf_counter() - t0:.1f} s)[/dim]")
        if key is not None:
            try:
                conformance_cache().mkdir(parents=True, exist_ok=True)
                (conformance_cache() / f"{key}.ok").write_text(f"{name}\n")
            except OSError:  # a read-only home: check again next time
                pass


#: The most seconds the pre-run conformance check of one method may take (or the job's time
#: limit, if smaller) before it is called inconclusive and the jobs run anyway.
CHECK_LIMIT_S = 120.0


def conformance_cache() -> Path:
    """Where passed conformance checks are remembered: ``$XDG_CACHE_HOME/occbench/conformance``
    (default ``~/.cache/...``)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "occbench" / "conformance"


def _conformance_key(name: str, params: dict[str, Any]) -> str | None:
    """A hash of what the checks' outcome depends on: the method's name, version and
    parameters, its source file (path, size, modification time: an edited plugin is checked
    again even without a version bump) and occbench's version; ``None`` if unknown."""
    import hashlib
    import inspect
    import json
    from importlib.metadata import PackageNotFoundError, version

    from occbench.harness import registry

    try:
        cls = registry.methods.get(name)
        src = Path(inspect.getfile(cls))
        st = src.stat()
        occ = version("occbench")
    except (registry.RegistryError, TypeError, OSError, PackageNotFoundError):
        return None
    blob = json.dumps([name, str(cls.version), params, str(src), st.st_size, st.st_mtime_ns, occ],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class LineProgress:
    """Progress as plain lines for logs and pipes: one line every ``every_s`` seconds or every
    ``step`` of the jobs, whichever comes first (a live bar would only show at the end)."""

    def __init__(self, out: Console, total: int, every_s: float = 5.0, step: float = 0.1) -> None:
        self.out = out
        self.total = total
        self.every_s = every_s
        self.step = max(1, int(total * step))
        self.t0 = time.perf_counter()
        self.last_t = self.t0
        self.last_n = 0
        self.first: tuple[float, int] | None = None  # (when, how many) at the first finish

    def eta_s(self, done: int, now: float) -> float | None:
        """Seconds left, from the pace since the first job finished (None until a second
        one has): the first job's time holds the workers' and sandbox's start-up, and
        extrapolating from it overstated a 35 s grid as 1,188 s."""
        if self.first is None:
            if done:
                self.first = (now, done)
            return None if done < self.total else 0.0
        t1, n1 = self.first
        if done <= n1 or now <= t1:
            return None if done < self.total else 0.0
        return (now - t1) / (done - n1) * (self.total - done)

    def update(self, done: int, status: str, force: bool = False) -> None:
        now = time.perf_counter()
        left = self.eta_s(done, now)
        if not force and done - self.last_n < self.step and now - self.last_t < self.every_s:
            return
        self.last_t, self.last_n = now, done
        el = now - self.t0
        eta = "?" if left is None else f"{left:.0f} s"
        pct = 100 * done / self.total if self.total else 100.0
        self.out.print(f"progress {done}/{self.total} jobs ({pct:.0f} %) · {status} · "
                       f"elapsed {el:.0f} s · ETA {eta}", highlight=False)


@app.command()
def run(
    spec: Annotated[str | None, typer.Argument(
        help="Spec TOML file, or a built-in spec name (quick). Or leave it out and use "
             "--methods/--datasets.")] = None,
    store: StoreOpt = Path("runs"),
    methods: Annotated[str | None, typer.Option(
        "--methods", "-m", help="Ad-hoc run without a spec: methods, comma-separated "
                                "(default parameters; `occbench list methods`).")] = None,
    datasets: Annotated[str | None, typer.Option(
        "--datasets", "-d", help="Ad-hoc run: datasets, comma-separated.")] = None,
    classes: Annotated[str | None, typer.Option(
        help="Ad-hoc run: normal classes of the image datasets, comma-separated (names or "
             "indices; default all).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Ad-hoc run: seeds, comma-separated (default 0).")] = None,
    limit: Annotated[int | None, typer.Option(
        help="Run at most the first N jobs still to run (a quick look at a big grid).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only list the jobs and whether each is in the store; run nothing."
    )] = False,
    data_root: DataRootOpt = None,
    runner: RunnerOpt = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (auto, HOST:PORT, "
                                                "ray://HOST:10001); default: start an embedded "
                                                "local Ray.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Most jobs in flight at once.")] = None,
    device: Annotated[str, typer.Option(help="auto (Ray: GPU jobs get the GPUs their method "
                                        "declares when there are any), cpu or cuda.")] = "auto",
    board: Annotated[bool, typer.Option(help="Print the aggregated table at the end.")] = True,
    check_data: Annotated[bool, typer.Option(help="Check each dataset before any job starts."
                                             )] = True,
    check_methods_: Annotated[bool, typer.Option(
        "--check-methods/--no-check-methods",
        help="Run the fast conformance checks of each method before its jobs.")] = True,
    sealed: Annotated[bool | None, typer.Option(
        "--sealed/--unsealed", help="Run methods in the bubblewrap sandbox (--sealed: fail if "
        "it is unavailable) or in the worker (--unsealed). Default: sealed where available, "
        "else unsealed with a warning.")] = None,
    time_limit: TimeLimitOpt = None,
    retry_failed: RetryFailedOpt = False,
) -> None:
    """Run the jobs of SPEC (or --methods × --datasets) not yet in the store; print the table.

    Ctrl-C once: no new jobs, the running ones finish; twice: they are cancelled.
    Exit status: 0 all ok; 1 a job failed (or was not rerun, see --retry-failed); 2 bad input.
    """
    import dataclasses

    from occbench.harness.run.limits import parse_duration

    try:
        job_limit = None if time_limit is None else parse_duration(time_limit, "--time-limit")
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if limit is not None and limit < 1:
        raise _fail("--limit must be at least 1")
    if store.exists() and not store.is_dir():
        raise _fail(f"--store {store} is a file, not a folder; give a new folder or an "
                    "occbench store")
    root = _data_root(data_root)
    sp, plan = _load_plan(spec, methods, datasets, classes, seeds, root)
    if job_limit is not None:  # not part of the job id: the same jobs, another limit
        plan.jobs = [dataclasses.replace(j, time_limit_s=job_limit) for j in plan.jobs]
    for s in plan.skipped:
        console.print(f"[dim]skipped: {escape(s)}[/dim]")
    if address is None:  # an existing cluster may have GPUs this machine lacks
        from occbench.harness.run.spec import split_requires_gpu

        here, need_gpu = split_requires_gpu(plan.jobs)
        if need_gpu:
            console.print(f"{len(need_gpu)} jobs need a GPU and this machine has none: not "
                          "attempted (run them on a GPU node, or a cluster with --address)")
            plan.jobs = here
    if dry_run:
        _print_dry_run(sp, plan.jobs, store, limit)
        return
    st = store_for_writing(store)
    pending = [j for j in plan.jobs if not st.has(j.job_id)]
    jobs = pending[:limit] if limit is not None else pending
    todo = len(jobs)
    console.print(f"spec [bold]{escape(sp.name)}[/bold]: {len(plan.jobs)} jobs, "
                  f"{len(plan.jobs) - len(pending)} already in {escape(str(store))}, "
                  f"{todo} to run" + (f" (--limit {limit} of {len(pending)})"
                                      if limit is not None and limit < len(pending) else ""))
    if check_data and jobs:  # only when something will run: a no-op rerun stays instant
        _precheck(sp, root, {j.dataset for j in jobs})
    seal_mode = seal_mode_checked(sealed) if jobs else "auto"
    if check_methods_ and jobs:
        check_methods(jobs, root, seal_mode)
    t0 = time.perf_counter()
    if not jobs:  # nothing to run: no runner (starting Ray alone takes seconds), no driver
        summary: Any = SimpleNamespace(ran=0, ok=0, failed=0, already_done=0, skipped_locked=0,
                                       failures=[], stop_reason=None, not_retried=0)
    else:
        summary = _execute(jobs, st, root, runner, device, address, max_concurrent, seal_mode,
                           retry_failed)
    wall = time.perf_counter() - t0

    console.print(f"ran {summary.ran} job{'' if summary.ran == 1 else 's'} in {wall:.1f} s: "
                  f"{summary.ok} ok, {summary.failed} "
                  f"failed, {summary.already_done + len(plan.jobs) - len(pending)} already done"
                  + (f", {summary.skipped_locked} held by another driver"
                     if summary.skipped_locked else "")
                  + (f", {len(pending) - todo} left by --limit" if len(pending) > todo else ""))
    for disp, why in summary.failures:
        err.print(f"  [red]failed[/red] {escape(disp)}: {escape(_one_line(why))}")
    if summary.not_retried:
        err.print(f"[yellow]{summary.not_retried} job(s) not rerun:[/yellow] they failed with "
                  "an error of the method itself, which the same method, data and seed repeat "
                  "(`occbench store status` lists them); --retry-failed runs them again")
    if summary.stop_reason:
        err.print(f"[yellow]stopped:[/yellow] {escape(summary.stop_reason)}")
    if board:
        _print_board(st, cached=True)
    if summary.failed or summary.stop_reason or summary.not_retried:
        raise typer.Exit(1)


def seal_mode_checked(sealed: bool | None) -> str:
    """Probe the sandbox before the first job: ``--sealed`` fails closed (exit 2), the default
    warns in one line when it has to run unsealed. Returns the mode for the runner."""
    from occbench.harness.run import sandbox

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




def _execute(jobs: list[Any], st: Any, root: str | None, runner: str | None, device: str,
             address: str | None, max_concurrent: int | None, seal_mode: str = "auto",
             retry_failed: bool = False) -> Any:
    """Run ``jobs`` with progress: a live bar on a terminal, plain lines otherwise."""
    from occbench.harness.run.driver import run_jobs
    from occbench.harness.run.runner import RunnerError
    from occbench.harness.store.runstore import StoreError

    r = make_runner(runner or default_runner(), device, address, max_concurrent, seal_mode)
    todo = len(jobs)
    counts = {"ok": 0, "failed": 0, "running": 0, "gone": 0}  # gone: held by another driver
    storing: set[str] = set()  # scored, their runs being written by the driver's writers

    def status() -> str:
        queued = (todo - counts["gone"] - counts["ok"] - counts["failed"] - counts["running"]
                  - len(storing))
        return (f"ok {counts['ok']} · running {counts['running']} · failed {counts['failed']} "
                f"· queued {max(queued, 0)}")

    def count(event: str, job: Any, out: Any, emit_line: Any) -> bool:
        """Update the counts; True when a job finished."""
        if event == "start":
            counts["running"] += 1
        elif event == "storing":
            counts["running"] = max(counts["running"] - 1, 0)
            storing.add(job.job_id)
        elif event == "locked":
            counts["gone"] += 1
        elif event in ("ok", "failed"):
            counts[event] += 1
            if job.job_id in storing:
                storing.discard(job.job_id)
            else:
                counts["running"] = max(counts["running"] - 1, 0)
            if event == "failed":
                e = (out.error or {}) if out is not None else {}
                emit_line(f"[red]failed[/red] {escape(job.display)}: "
                          f"{escape(str(e.get('type')))}: {escape(_one_line(e.get('message')))}")
            return True
        return False

    try:
        if hasattr(r, "connect"):
            r.connect()  # a cluster that cannot be reached fails here, before any progress
        if console.is_terminal:
            summary = _run_live(jobs, st, r, root, todo, counts, status, count, retry_failed)
        else:
            lines = LineProgress(console, todo)

            def progress(event: str, job: Any, out: Any) -> None:
                finished = count(event, job, out, console.print)
                lines.update(counts["ok"] + counts["failed"], status(),
                             force=finished and counts["ok"] + counts["failed"] == todo)

            if todo:
                lines.update(0, status(), force=True)
            summary = run_jobs(jobs, st, r, root, progress, retry_failed=retry_failed)
    except RunnerError as exc:
        raise _fail(str(exc)) from None
    except StoreError as exc:  # e.g. a store on a file system without locks
        raise _fail(str(exc)) from None
    finally:
        r.close()
    return summary


def _run_live(jobs: list[Any], st: Any, r: Any, root: str | None, todo: int,
              counts: dict[str, int], status: Any, count: Any, retry_failed: bool = False) -> Any:
    """Run with rich's live progress bar (a terminal)."""
    from occbench.harness.run.driver import run_jobs
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=real_console(console), transient=False, disable=not todo) as prog:
        task = prog.add_task("jobs", total=todo, status="")

        def progress(event: str, job: Any, out: Any) -> None:
            if count(event, job, out, prog.console.print):
                prog.advance(task)
            if event == "locked":
                prog.update(task, total=max(todo - counts["gone"], 0))
            prog.update(task, status=status())

        return run_jobs(jobs, st, r, root, progress, retry_failed=retry_failed)


def _print_dry_run(sp: Any, jobs: list[Any], store: Path, limit: int | None) -> None:
    from occbench.harness.store.runstore import RunStore

    st = RunStore(store)
    have = {j.job_id for j in jobs if st.has(j.job_id)}
    pending = [j for j in jobs if j.job_id not in have]
    chosen = {j.job_id for j in (pending[:limit] if limit is not None else pending)}
    t = table("job", "job id", "protocol", "status", title=f"dry run of {sp.name}")
    for j in jobs:
        state = ("in store" if j.job_id in have else "would run" if j.job_id in chosen
                 else "left by --limit")
        t.add_row(escape(j.display), j.job_id, escape(j.protocol), state)
    console.print(t)
    console.print(f"spec {escape(sp.name)}: {len(jobs)} jobs, {len(have)} in "
                  f"{escape(str(store))}, {len(chosen)} would run (dry run: nothing ran)")


def _one_line(msg: object, limit: int = 300) -> str:
    """First line of a failure message, shortened for the live display."""
    lines = str(msg or "").strip().splitlines()
    return lines[0][:limit] if lines else ""


def _precheck(sp: Any, root: str | None, names: set[str] | None = None) -> None:
    """Check each dataset of ``sp`` (those in ``names`` when given); a failure exits 2."""
    import json

    try:
        mod = importlib.import_module("occbench.harness.cli.data")
    except ImportError:
        return
    check = getattr(mod, "check_dataset", None)
    if check is None:
        return
    seen = set()
    for d in sp.all_datasets():
        if names is not None and d["name"] not in names:
            continue
        key = json.dumps([d["name"], d.get("params") or {}], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        rep = check(d["name"], root, d.get("params") or {})
        if not rep.ok:
            raise _fail(f"dataset {d['name']!r} failed its check:\n  " + "\n  ".join(rep.errors))


def _print_board(st: Any, fmt: OutFormat = OutFormat.table, cached: bool = False,
                 runs: Any = None, agg: Any = None) -> None:
    """The aggregated table of ``st``: a rich table (notes on the console), or with ``fmt``
    json/csv (the numbers of leaderboard.csv) or md (the table as shown) on stdout alone.

    ``cached``: reuse the table computed for the same store content (see :func:`board_key`):
    a rerun that ran nothing then prints it without importing scipy (the t intervals).
    ``runs``/``agg``: the tables a caller has already (the store is read once per command).
    """
    if fmt == OutFormat.table:
        shown = _board_display(st, cached, runs, agg)
        _show_board(shown)
        return
    from occbench.leaderboard.table import aggregate, display_table, runs_frame

    runs = runs_frame(st) if runs is None else runs
    agg = aggregate(runs) if agg is None else agg
    if fmt in (OutFormat.json, OutFormat.csv):
        num = agg.astype(object).where(agg.notna(), None)
        emit(num.to_dict(orient="records"), fmt, columns=[str(c) for c in agg.columns])
    else:  # Markdown: the table as shown, under its caption and the legend of its marks
        from occbench.leaderboard.table import CAPTION, tag_legend

        df = display_table(agg)
        notes = [CAPTION[0].upper() + CAPTION[1:] + ".", *(f"`{t}`" for t in tag_legend(df))]
        sys.stdout.write(" ".join(notes) + "\n\n")
        emit(df.astype(object).to_dict(orient="records"), fmt, columns=[str(c) for c in df.columns])


def _board_display(st: Any, cached: bool, runs: Any = None, agg: Any = None) -> dict[str, Any]:
    """``{"columns", "rows" (strings), "superseded", "incomplete"}`` of the terminal table."""
    import json

    cache = None
    if cached:
        key = board_key(st)
        cache = None if key is None else board_cache() / f"{key}.json"
        if cache is not None and cache.exists():
            try:
                return dict(json.loads(cache.read_text()))
            except (OSError, ValueError):
                pass
    from occbench.leaderboard.table import aggregate, display_table, runs_frame

    # the board passes the tables it has: the store is read once per command
    runs = runs_frame(st) if runs is None else runs
    agg = aggregate(runs) if agg is None else agg
    from occbench.leaderboard.table import tag_legend

    df = display_table(agg)
    shown = {"columns": [str(c) for c in df.columns],
             "rows": [[str(v) for v in row] for row in df.itertuples(index=False)],
             "legend": tag_legend(df),
             "superseded": int(runs.attrs.get("superseded", 0) or 0),
             "incomplete": int(agg.attrs.get("incomplete_seeds", 0) or 0)}
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{time.time_ns()}.tmp")
            tmp.write_text(json.dumps(shown))
            tmp.replace(cache)
        except OSError:  # a read-only home: compute it next time
            pass
    return shown


def _show_board(shown: dict[str, Any]) -> None:
    if not shown["rows"]:
        console.print("no runs in the store yet")
        return
    if shown["superseded"]:
        console.print(f"{shown['superseded']} superseded run(s) left out: the same entry, "
                      "class and seed run again with a newer method version or changed data "
                      "(the newest run counts; `occbench export` lists them all)")
    if shown["incomplete"]:
        console.print(f"{shown['incomplete']} seed(s) left out of the means: they lack some of "
                      "their entry's normal classes (still to run, or failed)")
    t = table(title="occbench — mean ± std over seeds (AUC: micro frame AUC for video, "
                    "class-mean AUROC for images)",
              caption=escape("; ".join(shown.get("legend") or [])) or None)
    for c in shown["columns"]:
        t.add_column(c, justify="right" if c not in ("dataset", "method", "protocol")
                     else "left")
    for row in shown["rows"]:
        t.add_row(*(escape(v) for v in row))
    console.print(t)


def board_cache() -> Path:
    """``$XDG_CACHE_HOME/occbench/boards`` (default ``~/.cache/...``)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "occbench" / "boards"


#: Code whose change changes the table of the same store content.
_BOARD_CODE = ("leaderboard/table.py", "leaderboard/stats.py", "harness/store/runstore.py",
               "harness/scoring/protocols.py")


def board_key(st: Any) -> str | None:
    """A hash of everything the terminal table is computed from: the store's path and the
    name, size and modification time of every file under its runs/, metrics/ and labels/
    (a run added, rescored or pruned changes it), occbench's version and the aggregation code.
    ``None`` when the store cannot be read."""
    import hashlib
    import os
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    try:
        root = Path(st.path).resolve()
        h.update(f"{root}|{version('occbench')}\n".encode())
        here = Path(__file__).resolve().parents[2]
        for rel in _BOARD_CODE:
            p = here / rel
            if p.exists():
                s = p.stat()
                h.update(f"{rel}|{s.st_size}|{s.st_mtime_ns}\n".encode())
        for sub in ("runs", "metrics", "labels"):
            for dirpath, dirnames, filenames in os.walk(root / sub):
                dirnames.sort()
                for f in sorted(filenames):
                    s = os.stat(os.path.join(dirpath, f))
                    rel = os.path.relpath(os.path.join(dirpath, f), root)
                    h.update(f"{rel}|{s.st_size}|{s.st_mtime_ns}\n".encode())
    except (OSError, PackageNotFoundError):
        return None
    return h.hexdigest()[:32]


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
    from occbench.harness.store.export import export_store

    if fmt not in ("csv", "parquet"):
        raise _fail("--format must be csv or parquet")
    store_for_reading(store)
    files = export_store(store, out, fmt)
    for f in files:
        console.print(f"wrote {escape(str(f))}")


class ListWhat(str, Enum):
    methods = "methods"
    datasets = "datasets"
    protocols = "protocols"


@app.command("list")
def list_(
    what: Annotated[ListWhat, typer.Argument(help="methods, datasets or protocols")],
    fmt: FormatOpt = OutFormat.table,
) -> None:
    """List registered methods, datasets or scoring protocols."""
    from occbench.harness import registry

    if what == ListWhat.protocols:
        from occbench.harness.scoring.protocols import protocols

        emit([{"id": p.id, "modality": p.modality, "normalize": p.normalize, "border": p.border,
               "smooth": p.smooth_sigma, "description": p.description} for p in protocols()],
             fmt, title="scoring protocols")
        return
    reg: Any = registry.methods if what == ListWhat.methods else registry.datasets
    try:
        entries = reg.entries()
        broken = reg.broken()
    except registry.RegistryError as exc:
        raise _fail(str(exc)) from None
    rows = []
    for e in entries:
        mods = sorted(e.obj.modalities) if what == ListWhat.methods else [e.obj.modality]
        rows.append({"name": e.name, "modality": ",".join(mods), "version": str(e.obj.version),
                     "package": e.source, "package_version": registry.dist_version(e.source),
                     "description": str(getattr(e.obj, "description", "") or "")})
    emit(rows, fmt, title=what.value,
         columns=["name", "modality", "version", "package", "package_version", "description"])
    for name, why in broken.items():
        err.print(f"[red]broken plugin[/red] {escape(name)}: {escape(why)}")


@app.command()
def validate(
    plugin: Annotated[str, typer.Argument(help="Registered method or dataset name, or "
                                          "module:Class of a method.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p",
                                                    help="Parameter as key=JSON value.")] = None,
    full: Annotated[bool, typer.Option(help="Use the method's full settings, not fast ones."
                                       )] = False,
    data_root: DataRootOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="text, or json (one line: ok and the "
                                     "results, for scripts).")] = "text",
    aux: Annotated[list[str] | None, typer.Option(
        "--aux", hidden=True, help="ROLE=FILE.npy: an auxiliary image pool handed over already "
                                   "loaded (what `occbench run` does for a sealed check).")] = None,
) -> None:
    """Run the conformance kit on a method or dataset plugin; exit 1 if any check fails."""
    import dataclasses
    import json

    from occbench.harness import registry
    from occbench.harness.conformance import check_dataset_plugin, check_method

    params = parse_params(param or [])
    try:
        is_dataset = ":" not in plugin and plugin not in registry.methods \
            and plugin in registry.datasets
        if is_dataset:
            report = check_dataset_plugin(plugin, params, _data_root(data_root))
        else:
            handed = None
            if aux:
                import numpy as np
                from occbench.harness.api import ImageData

                handed = {k: ImageData(np.load(v)) for k, _, v in (a.partition("=") for a in aux)}
            report = check_method(plugin, params, fast=not full, data_root=_data_root(data_root),
                                  auxiliary=handed)
    except (LookupError, ImportError, AttributeError, TypeError, OSError) as exc:
        raise _fail(str(exc)) from None
    if fmt == "json":
        sys.stdout.write(json.dumps({"ok": report.ok, "results": [
            dataclasses.asdict(r) for r in report.results]}, default=str) + "\n")
        raise typer.Exit(0 if report.ok else 1)
    console.print(escape(report.format()), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


class PluginKind(str, Enum):
    method = "method"
    dataset = "dataset"


@app.command()
def new(
    kind: Annotated[PluginKind, typer.Argument(help="method or dataset")],
    name: Annotated[str, typer.Argument(help="Plugin name, e.g. my-method (lowercase, hyphens).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder to create (default: "
                                             "./occbench-NAME).")] = None,
) -> None:
    """Create a plugin package: pyproject with the entry point, the class, a test, a spec.

    As generated it passes `pip install -e . && pytest && occbench validate NAME`; see
    docs/plugins.md.
    """
    from occbench.harness import registry
    from occbench.harness.cli.scaffold import ScaffoldError, names, write

    try:
        n = names(name)
        reg: Any = registry.methods if kind == PluginKind.method else registry.datasets
        if name in reg:
            raise ScaffoldError(f"{kind.value} {name!r} already exists (from "
                                f"{reg.entry(name).source}); choose another name")
        target = out if out is not None else Path(n["dist"])
        files = write(kind.value, name, target)
    except (ScaffoldError, registry.RegistryError, OSError) as exc:
        raise _fail(str(exc)) from None
    for f in files:
        console.print(f"wrote {escape(str(f))}", highlight=False)
    console.print(f"next: cd {escape(str(target))} && pip install -e . && pytest && "
                  f"occbench validate {escape(name)}", highlight=False)


def parse_params(items: list[str]) -> dict[str, Any]:
    import json

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
    metrics: Annotated[bool, typer.Option(
        "--metrics/--no-metrics", help="Copy the runs' metrics files too; --no-metrics for the "
                                       "committed results/, which keeps only what cannot be "
                                       "derived (readers compute metrics from raw scores).")
    ] = True,
) -> None:
    """Copy good runs missing from --into out of each source store, with their labels and
    metrics (content-addressed: no repeats; bad entries are reported and not copied)."""
    from occbench.harness.store.runstore import StoreError

    dst = store_for_writing(into)
    for s in sources:
        src = store_for_reading(s)
        try:
            copied, present = dst.merge_from(src, compact=compact, self_reported=self_reported,
                                             metrics=metrics)
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
    """List, or with --apply set aside, runs that no table counts.

    Runs superseded by a newer
    run of the same entry, class and seed (newer method version or changed data), and with
    --spec the runs none of the specs expands to any more. Nothing is deleted."""
    from collections import Counter

    from occbench.harness.run.spec import SpecError, spec_job_ids
    from occbench.leaderboard.table import runs_frame

    st = store_for_reading(store)
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
def store_status(store: StoreOpt = Path("runs"), fmt: FormatOpt = OutFormat.table) -> None:
    """Count finished and failed runs; list failures with their reason.

    With --format json, csv or md: one row per run, finished or failed.
    """
    st = store_for_reading(store)
    fails = st.failures()
    if fmt != OutFormat.table:
        rows = []
        for rec in st.records():
            rows.append(_status_row(rec, "ok"))
        rows += [_status_row(f, str(f.get("status") or "failed")) for f in fails]
        emit(rows, fmt, columns=["job_id", "status", "method", "dataset", "normal_class", "seed",
                                 "error"])
        return
    from occbench.leaderboard.analysis import failures_frame

    frame = failures_frame(st, lambda m: err.print(f"[yellow]warning:[/yellow] {escape(m)}"))
    console.print(f"{len(st.job_ids())} finished runs, {len(frame)} failed jobs")
    for f in frame.itertuples(index=False):
        where = "" if f.normal_class is None else f", class {f.normal_class}"
        console.print(f"  [red]{escape(str(f.status))}[/red] {escape(f.label)} × "
                      f"{escape(f.dataset)}{escape(where)}, seed {escape(str(f.seed))}: "
                      f"{escape(f.reason)} [dim]({escape(f.job_id)})[/dim]", soft_wrap=True)


def _status_row(rec: dict[str, Any], status: str) -> dict[str, Any]:
    job = rec.get("job") or {}
    e = rec.get("error") or {}
    return {"job_id": rec.get("job_id"), "status": status, "method": job.get("label")
            or job.get("method"), "dataset": job.get("dataset"),
            "normal_class": job.get("normal_class"), "seed": job.get("seed"),
            "error": f"{e.get('type')}: {_one_line(e.get('message'))}" if e else None}


_SUBMODULES_REGISTERED: set[str] = set()


def register_submodule(module: Any) -> None:
    """Add the commands of a sub-command module (its ``register(app)``) once.

    Called from this module's import loop below and from the end of each sub-command module:
    whichever of the two is imported first, the other finds the commands missing and adds them
    (a module imported first is only half-made when this one's loop imports it back)."""
    name = module.__name__
    if name not in _SUBMODULES_REGISTERED and hasattr(module, "register"):
        _SUBMODULES_REGISTERED.add(name)
        module.register(app)


# Sub-commands contributed by other modules of the harness (data, refresh, sweep, site...).
for _mod in ("data", "cluster", "board", "store"):
    try:
        _m = importlib.import_module(f"occbench.harness.cli.{_mod}")
    except ImportError as _exc:
        if getattr(_exc, "name", "") != f"occbench.harness.cli.{_mod}":
            raise
        continue
    register_submodule(_m)  # no-op while that module is the one importing this one


def _did_you_mean(msg: str) -> str:
    """The "; did you mean 'methods'?" hint for click's "'method' is not one of 'methods',
    ..." (``registry.did_you_mean``, as the unknown-plugin errors give it)."""
    import re

    from occbench.harness.registry import did_you_mean

    m = re.search(r"'([^']*)' is not one of ((?:'[^']*'(?:, )?)+)", msg)
    return did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)), n=1,
                       cutoff=0.6) if m else ""


def main() -> None:
    """The ``occbench`` command. Click's own usage errors (an unknown option, a bad choice, a
    missing argument) are one ``error:`` line naming the command's ``--help``, exit 2, like
    occbench's own errors (click prints three lines)."""
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except typer.TyperException as exc:  # click's exceptions, as typer bundles them
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click does
            exc.show()  # type: ignore[attr-defined]
            sys.exit(int(getattr(exc, "exit_code", 2)))
        fmt = getattr(exc, "format_message", None)
        msg = " ".join((fmt() if callable(fmt) else str(exc)).split())
        msg = msg.replace("Value error, ", "")  # the validation library's own prefix
        near = _did_you_mean(msg)
        msg = msg.rstrip(".") + near if near else msg
        code = int(getattr(exc, "exit_code", 1))
        ctx = getattr(exc, "ctx", None)
        hint = (f" (`{escape(ctx.command_path)} --help` lists what it takes)"
                if ctx is not None and code == 2 else "")
        err.print(f"error: {escape(msg)}{hint}", soft_wrap=True, highlight=False)
        sys.exit(code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)

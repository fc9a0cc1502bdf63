"""``occbench refresh`` (the CI entry) and ``occbench sweep`` (Ray Tune hyperparameter sweeps)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from occbench.harness.cli.main import (
    DataRootOpt,
    RetryFailedOpt,
    RunnerOpt,
    StoreOpt,
    TimeLimitOpt,
    _data_root,
    _fail,
    check_runner,
    console,
    err,
    escape,
    table,
)

AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address (auto, ray://...); "
                                                "default: start an embedded local Ray.")]
MaxConcOpt = Annotated[int | None, typer.Option(help="Most jobs in flight at once.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda (see `occbench run`).")]

#: Where ``occbench sweep NAME`` looks for NAME.toml when NAME is not a file.
SWEEP_DIRS = (Path("benchmarks/sweeps"), Path(__file__).resolve().parents[2] / "benchmarks" /
              "sweeps")


def register(app: typer.Typer) -> None:
    app.command()(refresh)
    app.command()(sweep)


# --------------------------------------------------------------------------------------------
# refresh
# --------------------------------------------------------------------------------------------


def refresh(
    spec: Annotated[str, typer.Argument(help="Spec TOML file, or a built-in spec name.")],
    store: StoreOpt = Path("runs"),
    check: Annotated[bool, typer.Option("--check", help="Only report what would run: exit 0 "
                                        "if nothing, 1 if some job would run.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would run and "
                                          "why; run and rebuild nothing (exit 0).")] = False,
    board_out: Annotated[Path, typer.Option(help="Where the board tables go.")] = Path("board"),
    site_out: Annotated[Path | None, typer.Option(help="Where the static site goes (default: "
                                                  "BOARD_OUT/site).")] = None,
    data_root: DataRootOpt = None,
    runner: RunnerOpt = None,
    address: AddressOpt = None,
    max_concurrent: MaxConcOpt = None,
    device: DeviceOpt = "auto",
    require_sealed: Annotated[bool, typer.Option(
        "--require-sealed", help="Run jobs sealed (fail if the sandbox is unavailable) and "
        "refuse to publish a board with unsealed runs (the leaderboard CI entry).")] = False,
    time_limit: TimeLimitOpt = None,
    retry_failed: RetryFailedOpt = False,
) -> None:
    """Run the jobs of SPEC whose content hash is not in the store; rebuild the board.

    A job is new when its method version or parameters, dataset content fingerprint or seed
    changed; a run whose metrics are stale (protocol or metric code changed) is rescored.
    Exit status: 0 all good; 1 a job failed (or, with --check, something would run or be
    rescored); 2 bad input.
    """
    from occbench.harness.cli.main import _load_plan
    from occbench.harness.cli.main import run as run_cmd
    from occbench.harness.run.refresh import plan_refresh
    from occbench.harness.scoring.protocols import get_protocol
    from occbench.harness.store.runstore import RunStore, StoreError

    if store.exists() and not store.is_dir():
        raise _fail(f"--store {store} is a file, not a folder; give a new folder or an "
                    "occbench store")
    if check and dry_run:
        raise _fail("--check and --dry-run: give one (--check reports and exits 1 if anything "
                    "would run; --dry-run only reports)")
    root = _data_root(data_root)
    # --check and --dry-run report what they can: a dataset without data here is named, and
    # the rest checked (a real refresh still stops on it before anything runs)
    _, plan = _load_plan(spec, None, None, None, None, root, missing_ok=check or dry_run)
    st = RunStore(store)
    try:
        rp = plan_refresh(plan.jobs, st)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{len(rp.up_to_date)} jobs up to date in {escape(str(store))}, "
                  f"{len(rp.to_run)} to run"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(rp.reasons().items()))})"
                     if rp.to_run else ""))
    if rp.to_run:
        t = table("job", "job id", "why it runs")
        for j, why in rp.to_run[:200]:
            t.add_row(escape(j.display), j.job_id, escape(why))
        console.print(t)
        if len(rp.to_run) > 200:
            console.print(f"... and {len(rp.to_run) - 200} more")
    if rp.need_gpu:
        console.print(f"{len(rp.need_gpu)} jobs need a GPU and this machine has none: listed, "
                      "never attempted here (a maintainer runs them on a GPU node or with "
                      "--address, then `occbench store merge`)")
        t = table("job needing a GPU", "job id", "why it runs")
        for j, why in rp.need_gpu[:200]:
            t.add_row(escape(j.display), j.job_id, escape(why))
        console.print(t)
    if rp.to_rescore:
        console.print(f"{len(rp.to_rescore)} stored runs to rescore from their raw scores "
                      "(metrics under their protocol missing or stale; nothing is retrained)")
    stale_gpu = [j for j, w in rp.stale() if j.requires_gpu]
    if stale_gpu:
        console.print(f"{len(stale_gpu)} GPU jobs replace older runs the board still shows")
    n_missing = sum(n for _, n in plan.missing)
    # one line per missing dataset (specs including the same dataset share it): the first
    # line of its error (`occbench data check` says the rest)
    by_data: dict[str, int] = {}
    for why, n in plan.missing:
        first = why.strip().splitlines()[0] if why.strip() else "no data"
        if n:
            by_data[first] = by_data.get(first, 0) + n
    for what, n in by_data.items():
        console.print(f"{n} jobs not checked, their data is not here: {escape(what)} "
                      "(`occbench data check` says where it is looked for)",
                      soft_wrap=True, highlight=False)
    if dry_run:
        console.print("dry run: nothing ran, the board was not rebuilt")
        raise typer.Exit(0)
    if check:
        # jobs that could not be checked are not known to be up to date
        raise typer.Exit(1 if rp.to_run or rp.to_rescore or stale_gpu or n_missing else 0)
    if rp.to_rescore:
        st.rescore(sorted({get_protocol(j.protocol).id for j, _ in rp.to_rescore}))
    code = 0
    if rp.to_run:
        try:
            run_cmd(spec=spec, store=store, data_root=data_root, runner=runner, address=address,
                    max_concurrent=max_concurrent, device=device, board=False, check_data=True,
                    sealed=True if require_sealed else None,
                    time_limit=time_limit, retry_failed=retry_failed)
        except typer.Exit as exc:
            code = int(exc.exit_code or 0)
        if code not in (0, 1):
            raise typer.Exit(code)
    if require_sealed:
        unsealed = unsealed_runs(st)
        if unsealed:
            raise _fail(f"{len(unsealed)} run(s) in {store} were not sealed (e.g. "
                        f"{', '.join(unsealed[:3])}): the board is not published; rerun them "
                        "sealed into a fresh store (occbench refresh --require-sealed), or "
                        "publish without --require-sealed")
    for f in rebuild_board(st, board_out, site_out):
        console.print(f"wrote {escape(str(f))}")
    raise typer.Exit(code)


def unsealed_runs(store: Any) -> list[str]:
    """Job ids of the store's runs whose record does not say ``sealed: true``."""
    return [r["job_id"] for r in store.records()
            if not (r.get("provenance") or {}).get("sealed")]


def rebuild_board(store: Any, board_out: Path, site_out: Path | None = None) -> list[Path]:
    """Write the board tables and, when the static site builder exists, the site."""
    from occbench.leaderboard.table import write_board

    _, files = write_board(store, board_out)
    out = [Path(f) for f in files]
    try:
        site = importlib.import_module("occbench.leaderboard.site")
    except ImportError as exc:
        if getattr(exc, "name", "") != "occbench.leaderboard.site":
            raise
        return out
    build_site = getattr(site, "build_site", None)
    if callable(build_site):
        target = site_out or board_out / "site"
        build_site(store, target)
        out.append(target)
    return out


# --------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------


def _find_sweep(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    for d in SWEEP_DIRS:
        if (d / f"{name}.toml").exists():
            return d / f"{name}.toml"
    known = sorted({q.stem for d in SWEEP_DIRS if d.exists() for q in d.glob("*.toml")})
    raise _fail(f"sweep {name!r} not found: give a TOML file (see docs/ray.md), or one of "
                f"{known}")


def sweep(
    sweep_file: Annotated[str, typer.Argument(help="Sweep TOML file (or the name of one in "
                                              "benchmarks/sweeps).")],
    store: StoreOpt = Path("runs"),
    data_root: DataRootOpt = None,
    runner: Annotated[str, typer.Option(help="Runner of the full jobs: ray or serial.",
                                        callback=check_runner)] = "ray",
    address: AddressOpt = None,
    max_concurrent: MaxConcOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Hyperparameter sweep of one method on one dataset with Ray Tune.

    Trials are selected on a validation split of normal training data (with pseudo anomalies);
    each config's full jobs go to the store and the table to STORE/sweeps/NAME.parquet.
    """
    from occbench.harness.cli.main import make_runner, store_for_writing
    from occbench.harness.run.sweep import SweepError, load_sweep, run_sweep, search_values

    root = _data_root(data_root)
    try:
        sw = load_sweep(_find_sweep(sweep_file))
    except SweepError as exc:
        raise _fail(str(exc)) from None
    st = store_for_writing(store)
    console.print(f"sweep [bold]{escape(sw.name)}[/bold]: {escape(sw.method)} on "
                  f"{escape(sw.dataset)}, {'; '.join(escape(s) for s in search_values(sw.search))}"
                  f", selected on {sw.select_on}")
    if sw.selected_on_test:
        err.print("[yellow]select_on = \"test\": configs are chosen on test labels; every record "
                  "is marked selected_on_test=true[/yellow]")
    from occbench.harness.run.runner import RunnerError

    r = make_runner(runner, device, address, max_concurrent)
    try:
        if hasattr(r, "connect"):
            r.connect()  # one Ray for Tune and the jobs
        result = run_sweep(sw, st, r, root, progress=_report_failures)
    except RunnerError as exc:
        raise _fail(str(exc)) from None
    finally:
        r.close()
    tab = result.table
    pcols = [c for c in tab.columns if c.startswith("param_")]
    t = table(*[c.removeprefix("param_") for c in pcols], "val AUC %", "test AUC %", "best")
    for row in tab.sort_values(pcols).itertuples(index=False):
        d = row._asdict()
        t.add_row(*[escape(_fmt(d[c])) for c in pcols], _pct(d["val_auc"]), _pct(d["test_auc"]),
                  "★" if d["best"] else "")
    console.print(t)
    if result.best is not None:
        cfg = {c.removeprefix("param_"): result.best[c] for c in pcols}
        console.print(f"best by {sw.select_on}: {escape(str(cfg))} (val AUC "
                      f"{_pct(result.best['val_auc'])}, test AUC {_pct(result.best['test_auc'])})")
    console.print(f"wrote {escape(str(result.path))}")
    errors = tab["trial_error"].dropna() if "trial_error" in tab else []
    for e in errors:
        err.print(f"[red]trial failed[/red]: {escape(str(e))}")
    if result.failed_jobs or len(errors):
        raise typer.Exit(1)


def _report_failures(event: str, job: Any, out: Any) -> None:
    """Progress callback of a sweep's full jobs: print each failure as it happens."""
    if event == "failed" and out is not None:
        e = out.error or {}
        msg = str(e.get("message", "")).strip().splitlines()
        err.print(f"[red]failed[/red] {escape(job.display)}: {escape(str(e.get('type')))}: "
                  f"{escape(msg[0][:300] if msg else '')}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if f != f else f"{100 * f:.2f}"


# imported before `main` (e.g. `from occbench.harness.cli.board import ...` first): main's
# import loop saw this module half-made, so its commands are added now that it is whole
from occbench.harness.cli import main as _main  # noqa: E402

_main.register_submodule(sys.modules[__name__])

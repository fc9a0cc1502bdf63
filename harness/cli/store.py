"""``occbench store verify`` and ``occbench store rescore``: a store's integrity, and metrics
re-derived from stored raw scores (never retraining)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from occbench.harness.cli.main import StoreOpt, _fail, console, store_app, store_for_reading
from rich.markup import escape


def register(app: typer.Typer) -> None:  # the commands hang off `store_app` at import
    del app


def _open(store: Path):  # type: ignore[no-untyped-def]
    # bad entries are listed by the command itself, not as they are met
    return store_for_reading(store, on_bad=lambda b: None)


@store_app.command("verify")
def store_verify(
    store: StoreOpt = Path("runs"),
    quarantine: Annotated[bool, typer.Option(
        "--quarantine", help="Move every bad entry to STORE/quarantine/ (nothing is deleted); "
                             "`occbench run` then redoes those runs.")] = False,
    recompute: Annotated[bool, typer.Option(
        "--recompute/--no-recompute",
        help="Recompute every stored metric from the stored raw scores and labels and fail "
             "on any difference.")] = True,
) -> None:
    """Check every run, label set, metrics file and failure record: checksums, job identity,
    metrics recomputed from raw scores. Lists each bad entry by path and reason; exit 1 if any."""
    st = _open(store)
    t0 = time.perf_counter()
    bad = st.verify(quarantine=quarantine, recompute=recompute)
    n_runs = len(list(st.runs_dir.iterdir())) if st.runs_dir.exists() else 0
    for b in bad:
        console.print(f"[red]bad[/red] {escape(b.line())}", soft_wrap=True)
    where = f"; moved to {escape(str(st.quarantine_dir))}/" if quarantine and bad else ""
    console.print(f"{len(bad)} bad entries{where} ({n_runs} runs checked in "
                  f"{time.perf_counter() - t0:.1f} s)")
    if bad and not quarantine:
        console.print("run `occbench store verify --quarantine` to set them aside; `occbench "
                      "run` then redoes the runs")
    if bad:
        raise typer.Exit(1)


@store_app.command("rescore")
def store_rescore(
    store: StoreOpt = Path("runs"),
    protocol: Annotated[list[str] | None, typer.Option(
        "--protocol", help="Also score every run of the protocol's modality under this "
                           "protocol (repeatable; `occbench list protocols`).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute fresh metrics too.")] = False,
) -> None:
    """(Re)compute missing or stale metrics of every run from its stored raw scores and labels
    (a protocol or metric fix re-evaluates the store in seconds, never retraining)."""
    from occbench.harness.scoring.protocols import ProtocolError, get_protocol

    st = _open(store)
    try:
        pids = [get_protocol(p).id for p in (protocol or [])]
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    t0 = time.perf_counter()
    c = st.rescore(pids, force=force)
    for b in st.skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(b.line())}", soft_wrap=True)
    console.print(f"{c['computed']} metrics computed, {c['fresh']} already fresh, "
                  f"{c['failed']} could not be scored ({time.perf_counter() - t0:.1f} s)")
    if c["failed"]:
        raise typer.Exit(1)


# imported before `main` (e.g. `from occbench.harness.cli.board import ...` first): main's
# import loop saw this module half-made, so its commands are added now that it is whole
from occbench.harness.cli import main as _main  # noqa: E402

_main.register_submodule(sys.modules[__name__])

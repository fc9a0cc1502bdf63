"""``occbench board``: leaderboard tables with statistics, and the static site."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from occbench.harness.cli.main import (
    FormatOpt,
    OutFormat,
    StoreOpt,
    _fail,
    _print_board,
    console,
    err,
    escape,
    store_for_reading,
)

if TYPE_CHECKING:
    import http.server


def register(app: typer.Typer) -> None:
    app.command()(board)


def board(
    store: StoreOpt = Path("runs"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("board"),
    site: Annotated[bool, typer.Option(
        "--site/--no-site", help="Also build the static HTML site into --out (--no-site: the "
                                 "tables only; a site already in --out is left as it is).")] = True,
    serve: Annotated[bool, typer.Option(
        help="Serve --out on http://127.0.0.1:PORT after building (Ctrl-C stops).")] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8000,
    published: Annotated[Path | None, typer.Option(
        help="Published-numbers CSV (default: the one shipped in occbench.leaderboard).")] = None,
    protocol: Annotated[list[str] | None, typer.Option(
        "--protocol", help="Show runs under this protocol instead of their own (one per "
                           "modality, repeatable; metrics not stored are computed from the "
                           "stored raw scores).")] = None,
    readme: Annotated[Path | None, typer.Option(
        "--readme", help="Rewrite the headline table between the occbench:headline markers "
                         "of this file (README.md) from the store.")] = None,
    fmt: FormatOpt = OutFormat.table,
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap replicates (video-run intervals, rank uncertainty); 0 = no video "
             "bootstrap.")] = 1000,
) -> None:
    """Aggregate the store into the leaderboard tables and the static site.

    Writes leaderboard.csv/.md (mean, std, 95 % CI over seeds), the statistics tables and the
    site (overview, dataset, method and run pages) into --out. --format json|csv|md prints
    the table on stdout (notes on stderr); with --no-site as well, nothing is written.
    """
    from occbench.harness.scoring.protocols import ProtocolError, get_protocol
    from occbench.leaderboard.analysis import analyze
    from occbench.leaderboard.published import PublishedFormatError
    from occbench.leaderboard.site import SiteError, SiteOptions, build, build_tables

    try:
        view = [get_protocol(p).id for p in (protocol or [])]
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    st = store_for_reading(store, protocol=view or None)
    # --format json|csv|md: stdout carries only the table; the notes go to stderr
    say = console if fmt == OutFormat.table else err
    if published is not None and not published.exists():
        raise _fail(f"--published {published}: no such file")
    if bootstrap < 0:
        raise _fail("--bootstrap must be >= 0")
    if serve and not site:  # before any work: nothing is written for a refused command
        raise _fail("--serve needs the site: drop --no-site")

    def warn(msg: str) -> None:
        err.print(f"[yellow]warning:[/yellow] {escape(msg)}")

    try:
        # one analysis (one read of the store) feeds the site, the tables and the terminal;
        # the site's own (it reads only the runs changed since its last build)
        if not site and fmt != OutFormat.table and readme is None:
            # the table on stdout and nothing else: no folder made, no file written
            a = analyze(st, published, n_boot=bootstrap or 200, warn=warn)
            files = []
        elif site:
            res = build(st, out, published, SiteOptions(n_boot=bootstrap), warn=warn)
            assert res.analysis is not None
            a = res.analysis
            files = [out / "leaderboard.csv", out / "leaderboard.md", out / "index.html"]
            say.print(f"board of {len(res.names)} pages in {escape(str(out))}/ "
                      f"(run pages: {res.runs_built} built, {res.runs_kept} unchanged; "
                      f"tables in {escape(str(out / 'data'))}/)")
        else:
            a = analyze(st, published, n_boot=bootstrap or 200, warn=warn)
            files = build_tables(st, out, published, n_boot=bootstrap, warn=warn, analysis=a)
    except (SiteError, PublishedFormatError) as exc:
        raise _fail(str(exc)) from exc
    _print_board(st, fmt, runs=a.runs, agg=a.agg)
    if readme is not None:
        from occbench.leaderboard.readme import update_readme

        try:
            changed = update_readme(readme, st, published)
        except (OSError, ValueError) as exc:
            raise _fail(str(exc)) from None
        say.print(f"{'updated' if changed else 'unchanged'}: the headline table in "
                  f"{escape(str(readme))}")
    for f in files:
        say.print(f"wrote {escape(str(f))}")
    if serve:
        serve_dir(out, port)


def make_server(folder: Path, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``folder`` bound to 127.0.0.1 (port 0 = any free port)."""
    import functools
    import http.server  # here, not at module level: `occbench --help` stays fast

    class _QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(_QuietHandler, directory=str(folder))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve_dir(folder: Path, port: int) -> None:
    """Serve ``folder`` on 127.0.0.1 only (not the network) until interrupted."""
    try:
        httpd = make_server(folder, port)
    except OSError as exc:
        raise _fail(f"cannot serve on 127.0.0.1:{port} ({exc}); pick another --port") from exc
    console.print(f"serving {escape(str(folder))} on http://127.0.0.1:{httpd.server_port}/ "
                  "(Ctrl-C stops)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        httpd.server_close()


# imported before `main` (e.g. `from occbench.harness.cli.board import ...` first): main's
# import loop saw this module half-made, so its commands are added now that it is whole
from occbench.harness.cli import main as _main  # noqa: E402

_main.register_submodule(sys.modules[__name__])

"""Console output of the command line: rich consoles created on first use, never truncating
tables off a terminal.

Kept apart from ``cli.py`` so that the sub-command modules (``cli_data``...) can import it
without importing ``cli`` (which imports them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Width used when output is not a terminal (a file, a pipe, CI logs): wide enough that no table
#: is cut ("datas…"); a terminal keeps its own width.
OFF_TERMINAL_WIDTH = 4000


def make_console(stderr: bool = False) -> Console:
    """A rich console that never truncates tables when writing to a file or a pipe."""
    from rich.console import Console

    c = Console(stderr=stderr)
    if not c.is_terminal:
        c = Console(stderr=stderr, width=OFF_TERMINAL_WIDTH)
    return c


class _LazyConsole:
    """Creates its rich console on first use: importing rich.console costs ~40 ms, which
    `occbench --help` and shell completion need not pay."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            self._console = make_console(self._stderr)
        return getattr(self._console, name)


    def real(self) -> Console:
        """The rich console itself (rich's live display needs it: a proxy has no dunders)."""
        if self._console is None:
            self._console = make_console(self._stderr)
        return self._console


def real_console(c: Any) -> Console:
    """``c`` itself if it is a rich console, the console behind it if it is a lazy one."""
    return c.real() if isinstance(c, _LazyConsole) else cast("Console", c)


console = cast("Console", _LazyConsole(stderr=False))
err = cast("Console", _LazyConsole(stderr=True))


def escape(text: str) -> str:
    """rich's markup escape, imported on first use (see :class:`_LazyConsole`)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def table(*columns: str, title: str | None = None, caption: str | None = None) -> Table:
    """A rich table (imported on first use); ``caption`` is printed under it."""
    from rich.table import Table

    return Table(*columns, title=title, caption=caption)



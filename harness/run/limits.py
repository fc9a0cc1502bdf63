"""Per-job time limits: the built-in default, and durations as people write them.

A job's limit comes from, in order: ``occbench run --time-limit`` (every job), the spec's
``[[datasets]]`` entry ``time_limit_s``, the spec's top-level ``time_limit_s``, and else
:data:`DEFAULT_TIME_LIMIT_S` (2 h), applied by the runner. ``0`` (or ``"none"``) means no limit.
Durations are seconds as a number, or a string such as ``"7200"``, ``"90s"``, ``"30m"``,
``"2h"``, ``"1h30m"``.
"""

from __future__ import annotations

import re
from typing import Any

#: A job with no limit of its own is stopped after this many seconds (2 h): a hanging method
#: must never stall a grid.
DEFAULT_TIME_LIMIT_S = 7200.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")


def parse_duration(value: Any, what: str = "time limit") -> float:
    """Seconds (float, ``0`` = no limit) from a number or a string like ``30m`` or ``1h30m``.

    Raises :class:`ValueError` with a one-line message naming ``what`` and the accepted forms.
    """
    hint = (f"{what} must be seconds (e.g. 7200) or a duration like 90s, 30m, 2h, 1h30m; "
            "0 or none for no limit")
    if isinstance(value, bool):
        raise ValueError(f"{hint}, got {value!r}")
    if isinstance(value, int | float):
        secs = float(value)
    elif isinstance(value, str):
        s = value.strip().lower().replace(" ", "")
        if s in ("none", "no", "off", "inf", "unlimited"):
            return 0.0
        try:
            secs = float(s)
        except ValueError:
            parts = _PART.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise ValueError(f"{hint}, got {value!r}") from None
            secs = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"{hint}, got {value!r}")
    if secs != secs or secs < 0 or secs == float("inf"):
        raise ValueError(f"{hint}, got {value!r}")
    return secs


def effective_time_limit(requested: float | None, default: float | None = DEFAULT_TIME_LIMIT_S
                         ) -> float | None:
    """The limit a runner applies, in seconds: ``requested`` (the job's own), else ``default``;
    ``None`` when there is none (``0`` means no limit)."""
    limit = default if requested is None else requested
    return float(limit) if limit else None


__all__ = ["DEFAULT_TIME_LIMIT_S", "effective_time_limit", "parse_duration"]

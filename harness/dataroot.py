"""Where the datasets live: ``resolve_data_root``.

Order: an explicit value (``--data-root``), the environment variable ``OCCBENCH_DATA_ROOT`` (the
older name ``OCCBENCH_DATA`` is accepted too), the
key ``data_root`` in ``~/.config/occbench/config.toml`` (``$XDG_CONFIG_HOME`` respected), else
``None`` (datasets that need files then raise ``DatasetNotFoundError`` with the expected layout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_VAR = "OCCBENCH_DATA_ROOT"
ENV_VAR_ALIAS = "OCCBENCH_DATA"  # what the tests used first; documented name: ENV_VAR


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/occbench/config.toml`` (default ``~/.config/occbench/config.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "occbench" / "config.toml"


def resolve_data_root(cli_value: str | None) -> Path | None:
    """The data root from the CLI value, ``$OCCBENCH_DATA_ROOT`` or the config file, in that order.

    A config file that is not valid TOML raises ``ValueError`` naming the file.
    """
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(ENV_VAR) or os.environ.get(ENV_VAR_ALIAS)
    if env:
        return Path(env).expanduser()
    cfg = config_path()
    if cfg.is_file():
        try:
            data = tomllib.loads(cfg.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{cfg}: not valid TOML ({exc}); fix or delete the file") from exc
        value = data.get("data_root")
        if value:
            p = Path(str(value)).expanduser()
            return p if p.is_absolute() else (cfg.parent / p).resolve()
    return None

"""occbench: a benchmark and leaderboard harness for one-class anomaly detection.

The import root; the subpackages live in the repository's top-level folders
(``harness/``, ``methods/``, ``datasets/``, ``leaderboard/``, ``site/``).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``__version__`` read lazily: importlib.metadata costs ~20 ms on every CLI start-up
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("occbench")
        except PackageNotFoundError:  # pragma: no cover - running from a raw checkout
            return "0+unknown"
    raise AttributeError(f"module 'occbench' has no attribute {name!r}")

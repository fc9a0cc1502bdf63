"""occbench: a benchmark and leaderboard harness for one-class anomaly detection.

The import root; the subpackages live in the repository's top-level folders
(``harness/``, ``methods/``, ``datasets/``, ``leaderboard/``, ``site/``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("occbench")
except PackageNotFoundError:  # pragma: no cover - running from a raw checkout
    __version__ = "0+unknown"

"""Shared fixtures. Real-data tests find the data via $OCCBENCH_DATA_ROOT (or the older
$OCCBENCH_DATA) or ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    env = os.environ.get("OCCBENCH_DATA_ROOT") or os.environ.get("OCCBENCH_DATA")
    # an explicit setting wins, even a missing folder (OCCBENCH_DATA_ROOT=/none: run as a user
    # would)
    for cand in [Path(env)] if env is not None else [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture
def realdata() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real benchmark data not found (set OCCBENCH_DATA_ROOT)")
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)

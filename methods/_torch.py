"""Shared PyTorch helpers for occbench methods: device choice, seeding, precision, compilation.

Generic on purpose (image and video methods use it); nothing here knows about a method.

* :func:`select_device` — the ``torch.device`` a method should use, from ``Context.device`` and a
  method-level ``device`` parameter (``"auto"`` defers to the context).
* :func:`seed_everything` — seeds Python, NumPy and torch; on CPU also turns on deterministic
  algorithms so that the same seed gives bit-identical scores.
* :func:`autocast` — a context manager for ``precision="bf16"`` (CUDA autocast) or ``"fp32"``
  (a no-op, and TF32 switched off, for exactness checks).
* :func:`memory_format` / :func:`maybe_compile` — channels-last and ``torch.compile`` switches that
  silently do nothing where they do not apply (CPU, old torch).
* :func:`peak_memory_mb` — peak CUDA memory since the last reset, in MiB (``None`` on CPU).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

PRECISIONS = ("bf16", "fp32")


def select_device(context_device: str, requested: str = "auto") -> torch.device:
    """Resolve the device to run on.

    ``requested`` is a method parameter: ``"auto"`` uses ``context_device`` (the harness's choice,
    ``"cpu"`` or ``"cuda[:N]"``), anything else overrides it. Asking for CUDA where none is
    available is an error rather than a silent fall-back, so a GPU benchmark never runs on CPU.
    """
    name = context_device if requested in ("auto", "", None) else requested
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); run with device='cpu' or on a GPU machine"
        )
    return dev


def wants_gpu(requested: str) -> bool:
    """True when a method parameter ``device`` asks for (or may use) a GPU."""
    return requested in ("auto", "cuda") or str(requested).startswith("cuda")


def seed_everything(seed: int, device: torch.device | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``.

    On CPU, deterministic algorithms are switched on (cheap there), so the same seed gives the
    same scores bit for bit. On CUDA only cuDNN benchmarking is switched on: bit-exact GPU runs
    would cost speed, and GPU results are compared by their AUC spread over seeds instead.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on CUDA for ``precision="bf16"``; plain fp32 (TF32 off) for ``"fp32"``.

    On CPU both run in fp32: CPU bf16 convolutions are slow and the CPU path exists for tests.
    """
    check_precision(precision)
    if device.type == "cuda" and precision == "bf16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
        return
    if device.type == "cuda":
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        return
    yield


def memory_format(device: torch.device, channels_last: bool, ndim: int) -> torch.memory_format:
    """The memory format for ``ndim``-D activations (4 = images, 5 = video clips).

    Channels-last only pays on CUDA tensor cores; on CPU the contiguous format is kept.
    """
    if not channels_last or device.type != "cuda":
        return torch.contiguous_format
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def maybe_compile(module: torch.nn.Module, enabled: bool, device: torch.device) -> Any:
    """``torch.compile(module)`` when ``enabled`` and on CUDA; else the module unchanged.

    Compiling on CPU is skipped: it costs more time than CPU-sized test models ever save.
    """
    if not enabled or device.type != "cuda":
        return module
    return torch.compile(module)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last :func:`reset_peak_memory`, MiB; None on CPU."""
    if device.type != "cuda":
        return None
    return float(torch.cuda.max_memory_allocated(device)) / 2**20


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for wall-clock timing); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

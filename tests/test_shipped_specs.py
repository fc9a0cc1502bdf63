"""Every grid and sweep spec shipped in benchmarks/ parses: method names and parameters, dataset
names, protocols and search ranges are checked (expanding needs the data, so it is not done)."""

from __future__ import annotations

from pathlib import Path

import pytest
from occbench.harness import registry
from occbench.harness.run.spec import load_spec, resolve_method
from occbench.harness.run.sweep import load_sweep
from occbench.harness.scoring.protocols import get_protocol

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SPECS = sorted([*BENCH.glob("*.toml"), *(BENCH / "reference").glob("*.toml")])
SWEEPS = sorted((BENCH / "sweeps").glob("*.toml"))


def test_there_are_shipped_specs() -> None:
    assert len(SPECS) >= 5 and len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_grid_spec_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert (spec.methods and spec.datasets and spec.seeds) or spec.includes
    for sp in [spec, *spec.includes]:
        for m in sp.methods:
            resolve_method(m["name"], m.get("params") or {}, f"{path.name}: ")
        for d in sp.datasets:
            cls = registry.datasets.get(d["name"])
            proto = d.get("protocol") or sp.protocols.get(cls.modality)
            if proto:
                assert get_protocol(str(proto)).modality == cls.modality


def test_reference_spec_includes_the_reference_grid() -> None:
    spec = load_spec(BENCH / "reference.toml")
    names = {Path(s.path).name for s in spec.includes}
    assert {"fashion-mnist.toml", "digits.toml", "ped2-cpu.toml", "ped2-gpu.toml"} <= names
    gpu = next(s for s in spec.includes if Path(s.path).name == "ped2-gpu.toml")
    assert all(m.get("requires_gpu") for m in gpu.methods)
    assert all((m.get("params") or {}).get("epochs") == 60 for m in gpu.methods)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_spec_is_valid(path: Path) -> None:
    sw = load_sweep(path)
    assert sw.search and registry.datasets.get(sw.dataset)
    resolve_method(sw.method, sw.params, f"{path.name}: ")

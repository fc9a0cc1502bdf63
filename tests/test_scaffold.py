"""``occbench new method|dataset NAME``: the generated package works as generated.

The fast tests import the generated files straight from the folder; the slow one does what the
README tells a plugin author: ``pip install -e . && pytest && occbench validate NAME`` in a
fresh virtual environment.
"""

from __future__ import annotations

import csv
import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from occbench.harness import registry
from occbench.harness.cli.main import app
from occbench.harness.cli.scaffold import ScaffoldError, names, render
from occbench.harness.conformance import check_dataset_plugin, check_method
from occbench.harness.run.spec import expand, spec_from_dict
from typer.testing import CliRunner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _generate(tmp_path: Path, kind: str, name: str) -> Path:
    out = tmp_path / name
    r = runner.invoke(app, ["new", kind, name, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"occbench validate {name}" in r.output
    return out


def _import_generated(out: Path, module: str, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.syspath_prepend(str(out))
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def test_names() -> None:
    assert names("my-method") == {"name": "my-method", "dist": "occbench-my-method",
                                  "module": "occbench_my_method", "cls": "MyMethod"}
    for bad in ("My", "1x", "a_b", "a--b", "-a", ""):
        with pytest.raises(ScaffoldError, match="lowercase"):
            names(bad)


def test_new_method_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _generate(tmp_path, "method", "zz-method")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        ".gitignore", "README.md", "occbench_zz_method/__init__.py",
        "occbench_zz_method/method.py", "pyproject.toml", "specs/zz-method.toml",
        "tests/test_plugin.py"]
    py = tomllib.loads((out / "pyproject.toml").read_text())
    assert py["project"]["name"] == "occbench-zz-method"
    assert py["project"]["entry-points"]["occbench.methods"] == {
        "zz-method": "occbench_zz_method.method:ZzMethod"}
    mod = _import_generated(out, "occbench_zz_method", monkeypatch)
    cls = mod.ZzMethod  # type: ignore[attr-defined]
    # every attribute the harness reads is set and documented in the class body
    lines = (out / "occbench_zz_method" / "method.py").read_text().splitlines()
    for attr in ("name", "version", "description", "modalities", "resources",
                 "temporal_context"):
        i = next(k for k, ln in enumerate(lines) if ln.strip().startswith(f"{attr}: ClassVar"))
        assert lines[i - 1].strip().startswith("#:"), attr
    i = next(k for k, ln in enumerate(lines) if "def n_parameters" in ln)
    assert lines[i + 1].strip().startswith('"""Learned numbers')
    assert cls.description and cls.name == "zz-method"
    report = check_method(cls, fast=True)
    assert report.ok, report.format()
    assert all(r.passed for r in report.results), report.format()  # separates too
    # the example spec expands (with the class registered as the entry point would)
    registry.methods.register(cls, source="occbench-zz-method")
    try:
        spec = tomllib.loads((out / "specs" / "zz-method.toml").read_text())
        jobs = expand(spec_from_dict(spec)).jobs
        assert {j.method for j in jobs} == {"zz-method", "ocsvm"}
        assert {j.dataset for j in jobs} == {"digits", "toy-video"}
    finally:
        registry.methods.unregister("zz-method")


def test_new_dataset_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _generate(tmp_path, "dataset", "zz-data")
    py = tomllib.loads((out / "pyproject.toml").read_text())
    assert py["project"]["entry-points"]["occbench.datasets"] == {
        "zz-data": "occbench_zz_data.dataset:ZzData"}
    mod = _import_generated(out, "occbench_zz_data", monkeypatch)
    cls = mod.ZzData  # type: ignore[attr-defined]
    registry.datasets.register(cls, source="occbench-zz-data")
    try:
        report = check_dataset_plugin("zz-data")
        assert report.ok and report.kind == "dataset", report.format()
        r = runner.invoke(app, ["validate", "zz-data"])
        assert r.exit_code == 0 and "conformance of dataset 'zz-data': PASS" in r.output
        spec = tomllib.loads((out / "specs" / "zz-data.toml").read_text())
        jobs = expand(spec_from_dict(spec)).jobs
        assert len(jobs) == 2 * 4 * 3  # ocsvm, iforest × 4 classes × 3 seeds
    finally:
        registry.datasets.unregister("zz-data")


def test_dataset_checks_catch_a_broken_dataset(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = _generate(tmp_path, "dataset", "zz-bad")
    mod = _import_generated(out, "occbench_zz_bad", monkeypatch)
    base = mod.ZzBad  # type: ignore[attr-defined]

    class Peeks(base):  # type: ignore[misc, valid-type]
        def load(self, normal_class: str | None = None):  # type: ignore[no-untyped-def]
            self.test_labels(normal_class)  # load() must never read labels
            return super().load(normal_class)

    class Misaligned(base):  # type: ignore[misc, valid-type]
        def test_labels(self, normal_class: str | None = None):  # type: ignore[no-untyped-def]
            lab = super().test_labels(normal_class)
            lab.per_video[""] = lab.per_video[""][:-1]
            return lab

    for cls, check in ((Peeks, "load"), (Misaligned, "labels")):
        registry.datasets.register(cls, source="tests")
        try:
            report = check_dataset_plugin("zz-bad")
        finally:
            registry.datasets.unregister("zz-bad")
        assert not report.ok and report.failures()[0].check == check, report.format()


def test_new_refuses_taken_names_and_used_folders(tmp_path: Path) -> None:
    r = runner.invoke(app, ["new", "method", "ocsvm", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "already exists (from occbench)" in r.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["new", "method", "zz-ok", "--out", str(tmp_path / "full")])
    assert r.exit_code == 2 and "not an empty folder" in r.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # nothing overwritten
    r = runner.invoke(app, ["new", "method", "Bad_Name"])
    assert r.exit_code == 2 and "lowercase" in r.output
    with pytest.raises(ScaffoldError, match="choose method or dataset"):
        render("protocol", "zz")


def _sh(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["method", "dataset"])
def test_generated_package_installs_tests_and_validates(tmp_path: Path, kind: str) -> None:
    """The README's three commands, in a fresh venv that sees the system's packages (torch,
    numpy...). Offline: occbench itself is installed from this checkout first, and pip builds
    without isolation (isolation would download setuptools); otherwise as a user runs them."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    # no pip of its own: the venv's bundled setuptools would be older than the system's
    _sh([base, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--no-build-isolation"]
    _sh([*pip, "--no-deps", "-e", str(REPO)], tmp_path)
    name = f"zz-{kind}"
    out = tmp_path / name
    _sh([str(venv / "bin" / "occbench"), "new", kind, name, "--out", str(out)], tmp_path)
    _sh([*pip, "-e", "."], out)
    assert "passed" in _sh([py, "-m", "pytest", "-q", "-p", "no:cacheprovider"], out)
    report = _sh([str(venv / "bin" / "occbench"), "validate", name], out)
    assert f"conformance of {kind} '{name}': PASS" in report
    listing = _sh([str(venv / "bin" / "occbench"), "list", f"{kind}s", "-f", "csv"], out)
    row = next(r for r in csv.DictReader(io.StringIO(listing)) if r["name"] == name)
    assert row["package"] == f"occbench-{name}" and row["package_version"] == "0.1.0"
    assert row["description"]

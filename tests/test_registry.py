"""Entry-point discovery, duplicates, did-you-mean, and a third-party plugin package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from occbench.harness import registry
from occbench.harness.registry import DuplicatePluginError, Registry, UnknownPluginError

BUILTIN_METHODS = {"ocsvm", "iforest", "kde"}
BUILTIN_DATASETS = {"digits", "toy-video"}


def test_builtins_come_from_entry_points() -> None:
    names = {e.name: e.source for e in registry.methods.entries()}
    assert set(names) >= BUILTIN_METHODS
    assert all(names[n] == "occbench" for n in BUILTIN_METHODS)
    assert set(registry.datasets.names()) >= BUILTIN_DATASETS


def test_did_you_mean() -> None:
    with pytest.raises(UnknownPluginError, match="did you mean 'ocsvm'"):
        registry.methods.get("ocsvn")
    with pytest.raises(UnknownPluginError, match="did you mean 'toy-video'"):
        registry.datasets.get("toy_video")


def _fake_dist(tmp: Path, dist: str, module: str, body: str, eps: dict[str, str]) -> None:
    (tmp / f"{module}.py").write_text(body)
    info = tmp / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in eps.items())
    (info / "entry_points.txt").write_text(f"[occbench.methods]\n{lines}\n")


PLUGIN = '''
from occbench.methods.classic import OCSVM
class Mine(OCSVM):
    name = "{name}"
'''


def test_third_party_package_registers_like_builtins(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(tmp_path, "acme_ad", "acme_ad", PLUGIN.format(name="acme"),
               {"acme": "acme_ad:Mine"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", registry.METHOD_GROUP, registry.methods.base)
    e = reg.entry("acme")
    assert e.source == "acme_ad" and e.obj.name == "acme"
    assert set(reg.names()) >= BUILTIN_METHODS
    sys.modules.pop("acme_ad", None)


def test_duplicate_name_is_an_error_naming_both_packages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(tmp_path, "evil_ad", "evil_ad", PLUGIN.format(name="ocsvm"),
               {"ocsvm": "evil_ad:Mine"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", registry.METHOD_GROUP, registry.methods.base)
    with pytest.raises(DuplicatePluginError, match=r"'ocsvm' is registered twice.*evil_ad"):
        reg.names()
    sys.modules.pop("evil_ad", None)


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(tmp_path, "broken_ad", "broken_ad", "raise ImportError('missing dep xyz')\n",
               {"broken": "broken_ad:Nope"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", registry.METHOD_GROUP, registry.methods.base)
    assert "broken" not in reg.names() and "ocsvm" in reg.names()
    assert "missing dep xyz" in reg.broken()["broken"]
    with pytest.raises(registry.BrokenPluginError, match="failed to load"):
        reg.get("broken")


def test_entry_point_name_must_match_class_name(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(tmp_path, "odd_ad", "odd_ad", PLUGIN.format(name="other"), {"odd": "odd_ad:Mine"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", registry.METHOD_GROUP, registry.methods.base)
    # reported with the other broken plugins (`occbench list` still lists the rest) ...
    assert "odd" not in reg.names() and "ocsvm" in reg.names()
    assert "must be equal" in reg.broken()["odd"]
    # ... and asking for it names the mismatch
    with pytest.raises(registry.BrokenPluginError, match="must be equal"):
        reg.get("odd")

"""The conformance kit: every registered method passes; broken plugins fail, naming the fault."""

from __future__ import annotations

import plugins_for_tests
import pytest
from occbench.harness import registry
from occbench.harness.conformance import check_method

TEST_PLUGINS = {c.name for c in plugins_for_tests.ALL}


def _registered() -> list[str]:
    return [n for n in registry.methods.names() if n not in TEST_PLUGINS]


@pytest.mark.parametrize("name", _registered())
def test_every_registered_method_conforms(name: str) -> None:
    report = check_method(name, fast=True)
    assert report.ok, report.format()
    checks = {r.check for r in report.results}
    assert {"params", "scores", "deterministic", "no_label_access", "test_independent"} <= checks


def test_good_plugin_passes() -> None:
    assert check_method("test-mean").ok


@pytest.mark.parametrize(
    ("plugin", "check", "phrase"),
    [
        ("test-nan", "scores", "non-finite"),
        ("test-wrong-length", "scores", "scores for"),
        ("test-reads-labels", "no_label_access", "reads test labels"),
        ("test-nondeterministic", "deterministic", "same seed gave different scores"),
        ("test-transductive", "test_independent", "uses the test set"),
    ],
)
def test_broken_plugins_fail_naming_the_fault(plugin: str, check: str, phrase: str) -> None:
    report = check_method(plugin)
    assert not report.ok
    failed = [r.message for r in report.failures() if r.check == check]
    assert failed, report.format()
    assert any(phrase in m for m in failed), failed
    assert "FAIL" in report.format()


def test_nan_video_scores_outside_border_fail() -> None:
    report = check_method("test-nan", modalities=["video"])
    msg = {r.check: r.message for r in report.failures()}["scores"]
    assert "NaN is allowed only in the first 0 and last 0 frames" in msg


def test_label_file_read_is_caught(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from occbench.harness.conformance import label_tripwire

    f = tmp_path / "labels.npy"
    np.save(f, np.zeros(3))
    with label_tripwire([f]) as hits:
        np.load(f)
    assert hits == [str(f.resolve())]

"""Sweep files, pseudo anomalies and refresh reasons: no Ray needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from occbench.harness.api import ImageData, Video, VideoData
from occbench.harness.run.refresh import explain
from occbench.harness.run.spec import expand, spec_from_dict
from occbench.harness.run.sweep import (
    SweepError,
    corrupt_images,
    make_validation,
    sweep_from_dict,
    sweep_jobs,
)

BASE: dict[str, Any] = {"name": "s", "method": "ocsvm", "dataset": "digits", "classes": ["0"],
        "search": {"nu": {"grid": [0.1, 0.2]}, "gamma": {"loguniform": [1e-3, 1e-1]}}}


def test_sweep_spec_parses_and_rejects_bad_input() -> None:
    sw = sweep_from_dict(BASE)
    assert sw.search == {"nu": ("grid", [0.1, 0.2]), "gamma": ("loguniform", [1e-3, 1e-1])}
    assert sw.select_on == "validation" and not sw.selected_on_test
    cases: list[tuple[dict[str, Any], str]] = [
        ({"search": {"nope": {"grid": [1]}}}, "has no parameters ['nope']"),
        ({"search": {"nu": {"uniform": [0.5, 0.1]}}}, "low < high"),
        ({"search": {"nu": [0.1]}}, "write one of"),
        ({"select_on": "labels"}, "select_on must be"),
        ({"params": {"nu": 0.1}}, "both fixed"),
        ({"colour": 1}, "unknown keys ['colour']"),
    ]
    for bad, msg in cases:
        with pytest.raises(SweepError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            sweep_from_dict({**BASE, **bad}, "x.toml")


def test_sweep_jobs_are_tagged_and_marked_when_selected_on_test() -> None:
    (job,) = sweep_jobs(sweep_from_dict(BASE), {"nu": np.float64(0.2), "gamma": 0.01}, None, "t1")
    assert job.method_params["nu"] == 0.2 and type(job.method_params["nu"]) is float
    assert job.tags["sweep"] == "s" and job.tags["trial"] == "t1" and not job.selected_on_test
    (tjob,) = sweep_jobs(sweep_from_dict({**BASE, "select_on": "test"}), {"nu": 0.2,
                                                                          "gamma": 0.01}, None)
    assert tjob.selected_on_test and tjob.job_id != job.job_id


def test_validation_split_holds_out_normals_and_adds_pseudo_anomalies() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8)
    vs = make_validation(ImageData(imgs), 0.2, np.random.default_rng(1), corrupt_images)
    assert len(vs.fit) == 16 and len(vs.val) == 8
    assert vs.labels.tolist() == [0] * 4 + [1] * 4
    assert isinstance(vs.val, ImageData)
    held, anom = vs.val.images[:4], vs.val.images[4:]
    assert (held != anom).reshape(4, -1).any(axis=1).all()  # every pseudo anomaly changed
    videos = VideoData(tuple(Video(f"v{i}", rng.integers(0, 255, (9, 8, 8, 1), dtype=np.uint8))
                             for i in range(3)))
    vv = make_validation(videos, 0.34, np.random.default_rng(1), corrupt_images)
    assert isinstance(vv.fit, VideoData) and len(vv.fit) == 2 and len(vv.val) == 1
    assert vv.labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]


def test_refresh_names_what_changed() -> None:
    def job(nu: float, seed: int = 0):  # type: ignore[no-untyped-def]
        return expand(spec_from_dict({"seeds": [seed], "methods": [
            {"name": "ocsvm", "params": {"nu": nu}}],
            "datasets": [{"name": "digits", "classes": ["0"]}]})).jobs[0]

    old = job(0.1).to_dict()
    assert explain(job(0.2), [old]) == "method_params.nu 0.1 → 0.2"
    changed = {**old, "method_version": "0"}
    assert explain(job(0.1), [changed]) == "method_version 0 → " + old["method_version"]
    assert explain(job(0.1), []) == "new"

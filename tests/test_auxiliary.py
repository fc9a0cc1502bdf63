"""Auxiliary image datasets (Method.auxiliary_datasets): resolved by the harness at expand time,
part of the job id, handed to the method as ``context.auxiliary`` (training images only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import plugins_for_tests  # noqa: F401  (registers test-aux-pool)
import pytest
from occbench.harness import registry
from occbench.harness.conformance import check_method
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import SpecError, expand, spec_from_dict
from occbench.harness.store.runstore import RunStore


@pytest.fixture(autouse=True)
def _plugins_in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCCBENCH_PLUGIN_MODULES", "plugins_for_tests")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))


def spec(pool: str, method: str = "test-aux-pool", **extra: object) -> dict:
    params = {"pool": pool} if method == "test-aux-pool" else {"intruder": pool, **extra}
    ds = ({"name": "digits", "classes": ["3"]} if method == "test-aux-pool" else
          {"name": "toy-video", "params": {"n_train": 2, "n_test": 2, "n_frames": 24}})
    return {"name": "aux", "seeds": [0], "fast": True,
            "methods": [{"name": method, "params": params}], "datasets": [ds]}


def test_auxiliary_dataset_is_part_of_the_job_and_reaches_the_method(tmp_path: Path) -> None:
    (job,) = expand(spec_from_dict(spec("digits"))).jobs
    digits = registry.datasets.get("digits")()
    assert job.auxiliary == {"pool": {"dataset": "digits", "version": str(digits.version),
                                      "fingerprint": digits.fingerprint()}}
    (plain,) = expand(spec_from_dict(spec(""))).jobs
    assert plain.auxiliary == {} and "auxiliary" not in plain.identity()  # ids of old runs hold
    assert job.job_id != plain.job_id
    # the fingerprint is in the id: other data in the pool is another job
    moved = type(job).from_dict({**job.to_dict(), "auxiliary": {
        "pool": {**job.auxiliary["pool"], "fingerprint": "0" * 16}}})
    assert moved.job_id != job.job_id

    store = RunStore(tmp_path / "s")
    s = run_jobs([job], store, SerialRunner())  # a spawned worker, as in real runs
    assert (s.ok, s.failed) == (1, 0)
    # the method scored against the pool's mean: all training images of all 10 classes
    pool = digits.auxiliary_images()
    assert pool.shape[0] == sum(len(digits.load(c).train) for c in digits.classes())
    assert f"pool digits shape {pool.shape}" in store.log(job.job_id)
    sc = store.scores(job.job_id)
    test = digits.load("3").test.images
    want = np.abs(test.reshape(len(test), -1).mean(1) - float(np.mean(pool)))
    np.testing.assert_allclose(sc["raw"].to_numpy(), want, rtol=1e-6)
    assert store.record(job.job_id)["job"]["auxiliary"]["pool"]["dataset"] == "digits"


def test_bad_auxiliary_datasets_fail_before_anything_runs() -> None:
    with pytest.raises(SpecError, match="did you mean"):
        expand(spec_from_dict(spec("digit")))
    with pytest.raises(SpecError, match="must be an image dataset"):
        expand(spec_from_dict(spec("toy-video")))
    with pytest.raises(SpecError, match="pool='no-such-data'"):
        expand(spec_from_dict(spec("no-such-data")))


def test_conformance_kit_hands_auxiliary_images_over() -> None:
    assert check_method("test-aux-pool", params={"pool": "digits"}).ok
    bad = check_method("test-aux-pool", params={"pool": "toy-video"})
    assert not bad.ok and any(r.check == "auxiliary" and "image dataset" in r.message
                              for r in bad.results)


def test_lntra_patch_takes_its_intruders_from_a_registered_dataset(tmp_path: Path) -> None:
    (job,) = expand(spec_from_dict(spec("digits", method="lntra-patch", p=1.0))).jobs
    (noise,) = expand(spec_from_dict(spec("noise", method="lntra-patch", p=1.0))).jobs
    assert job.auxiliary["intruder"]["dataset"] == "digits" and noise.auxiliary == {}
    store = RunStore(tmp_path / "s")
    s = run_jobs([job, noise], store, SerialRunner(in_process=True))
    assert (s.ok, s.failed) == (2, 0)
    a, b = (store.scores(j.job_id)["raw"].to_numpy() for j in (job, noise))
    inner = np.isfinite(a)  # clip-based: the first 8 and last 7 frames of a video have none
    assert inner.sum() == 2 * (24 - 15) and np.array_equal(inner, np.isfinite(b))
    assert not np.allclose(a[inner], b[inner])  # trained on other intruders: other scores

"""A verified store: corrupt entries are not done, readers skip them with one line, verify and
quarantine list and move them, scoring is derived from raw scores and redone without retraining
(issue 11, findings 1, 4 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from occbench.harness.cli.main import app
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import expand, spec_from_dict
from occbench.harness.scoring import protocols
from occbench.harness.store.runstore import RunStore, StoreError, self_digest
from test_protocols import reference_eer
from typer.testing import CliRunner

runner = CliRunner()

SPEC = {"name": "t", "seeds": [0, 1],
        "methods": [{"name": "iforest", "params": {"n_estimators": 10}}],
        "datasets": [{"name": "digits", "classes": ["0", "1"]},
                     {"name": "toy-video", "params": {"n_train": 2, "n_test": 2,
                                                      "n_frames": 30}}]}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    path = tmp_path_factory.mktemp("integrity") / "store"
    jobs = expand(spec_from_dict(SPEC)).jobs
    s = run_jobs(jobs, RunStore(path), SerialRunner(in_process=True))
    assert (s.ok, s.failed) == (len(jobs), 0)
    return path, jobs


def _copy(grid: tuple[Path, list], tmp_path: Path) -> tuple[RunStore, list]:
    import shutil

    shutil.copytree(grid[0], tmp_path / "s")
    return RunStore(tmp_path / "s", on_bad=lambda b: None), grid[1]


def test_store_layout_runs_hold_raw_scores_and_labels_are_stored_once(grid) -> None:
    path, jobs = grid
    st = RunStore(path)
    assert len(st.job_ids()) == len(jobs) == 6
    rec = json.loads((path / "runs" / jobs[0].job_id / "record.json").read_text())
    assert "metrics" not in rec and rec["sha256"] == self_digest(rec)
    assert set(rec["files"]) == {"raw.parquet", "log.txt"}
    # 2 digits classes + 1 video test set: 3 label sets for 6 runs
    assert len(list((path / "labels").glob("*.parquet"))) == 3
    assert {p.name for p in (path / "metrics").iterdir()} == {"image@2", "video-minmax@2"}
    assert st.verify() == []


@pytest.mark.parametrize("damage", ["truncated-record", "empty-object", "garbage",
                                    "zero-byte-raw", "edited-job", "flipped-raw-byte"])
def test_a_bad_run_is_not_done_and_readers_skip_it(grid, tmp_path: Path, damage: str) -> None:
    st, jobs = _copy(grid, tmp_path)
    victim = jobs[0].job_id
    d = st.runs_dir / victim
    if damage == "truncated-record":
        (d / "record.json").write_text((d / "record.json").read_text()[:50])
    elif damage == "empty-object":
        (d / "record.json").write_text("{}")
    elif damage == "garbage":
        (d / "record.json").write_bytes(b"\x00\xffnot json")
    elif damage == "zero-byte-raw":
        (d / "raw.parquet").write_bytes(b"")
    elif damage == "edited-job":  # the record's checksum recomputed, but the identity breaks
        rec = json.loads((d / "record.json").read_text())
        rec["job"]["seed"] = 7
        rec["sha256"] = self_digest(rec)
        (d / "record.json").write_text(json.dumps(rec))
    else:
        b = bytearray((d / "raw.parquet").read_bytes())
        b[len(b) // 2] ^= 0xFF
        (d / "raw.parquet").write_bytes(bytes(b))
    assert not st.has(victim)
    assert victim not in st.job_ids() and len(st.job_ids()) == len(jobs) - 1
    # verify lists it by path and reason; export/board/status never trace back
    bad = st.verify()
    assert [b.path.name for b in bad] == [victim] and bad[0].reason
    for argv in (["store", "status", "--store", str(st.path)],
                 ["export", "--store", str(st.path), "--out", str(tmp_path / "e")],
                 ["board", "--store", str(st.path), "--out", str(tmp_path / "b"),
                  "--no-site", "--bootstrap", "0"]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, (argv, r.output)
        assert "Traceback" not in r.output
    r = runner.invoke(app, ["store", "verify", "--store", str(st.path)])
    assert r.exit_code == 1 and victim in r.output
    # the rerun redoes exactly the bad run (the bad folder is set aside, not deleted)
    s = run_jobs(jobs, st, SerialRunner(in_process=True))
    assert (s.already_done, s.ok) == (len(jobs) - 1, 1)
    assert st.verify() == [] and list((st.quarantine_dir / "run").iterdir())


def test_verify_quarantine_moves_bad_entries_and_nothing_else(grid, tmp_path: Path) -> None:
    st, jobs = _copy(grid, tmp_path)
    lab = next(st.labels_dir.glob("*.parquet"))
    users = {j for j in st.job_ids() if st.run_record(j)["labels"] == lab.stem}
    (st.runs_dir / jobs[1].job_id / "record.json").write_text("{")
    lab.write_bytes(lab.read_bytes()[:20])
    (st.failed_dir / f"{'a' * 20}.json").write_text('{"job_id": ')
    r = runner.invoke(app, ["store", "verify", "--store", str(st.path), "--quarantine"])
    assert r.exit_code == 1, r.output
    bad = {p.name.split(".")[0] for p in (st.quarantine_dir / "run").iterdir()
           if p.is_dir()}
    # the damaged run, and the runs whose labels were damaged (they cannot be scored)
    assert bad == users | {jobs[1].job_id} and users
    n = len(bad)
    assert list((st.quarantine_dir / "labels").glob(f"{lab.stem}.parquet.*"))
    assert list((st.quarantine_dir / "failure").glob("aaaa*.json.*"))
    assert st.verify() == [] and len(st.job_ids()) == len(jobs) - n
    s = run_jobs(jobs, st, SerialRunner(in_process=True))  # redoes exactly those
    assert (s.already_done, s.ok) == (len(jobs) - n, n) and st.verify() == []


def test_a_truncated_failure_record_never_stops_the_driver(tmp_path: Path) -> None:
    import plugins_for_tests  # noqa: F401  (test-nan)

    spec = spec_from_dict({"name": "t", "methods": [{"name": "test-nan"},
                                                    {"name": "test-mean"}],
                           "datasets": [{"name": "digits", "classes": ["0", "1"]}]})
    jobs = expand(spec).jobs
    st = RunStore(tmp_path / "s", on_bad=lambda b: None)
    run_jobs(jobs, st, SerialRunner(in_process=True))
    for p in st.failed_dir.glob("*.json"):
        p.write_text(p.read_text()[:30])
    r = runner.invoke(app, ["store", "status", "--store", str(st.path)])
    assert r.exit_code == 0 and "Traceback" not in r.output
    s = run_jobs(jobs, st, SerialRunner(in_process=True))
    assert s.failed == 2 and s.already_done == 2  # failed again, recorded, and went on
    assert len(st.failures()) == 2


def test_rescore_recomputes_stale_metrics_without_retraining(grid, tmp_path: Path,
                                                            monkeypatch) -> None:
    st, _ = _copy(grid, tmp_path)
    before = {j: st.record(j)["metrics"] for j in st.job_ids()}
    mtimes = {j: (st.runs_dir / j / "raw.parquet").stat().st_mtime_ns for j in st.job_ids()}
    # a metric-code fix: every stored metric becomes stale, readers recompute, rescore stores
    monkeypatch.setattr(protocols, "METRICS_VERSION", protocols.METRICS_VERSION + 1)
    assert all(st._stored_metrics(j, st.run_record(j)["job"]["protocol"], st.run_record(j))
               is None for j in st.job_ids())
    assert {j: st.record(j)["metrics"] for j in st.job_ids()} == before  # fresh, not stale
    c = st.rescore()
    assert c == {"fresh": 0, "computed": 6, "failed": 0}
    assert st.rescore() == {"fresh": 6, "computed": 0, "failed": 0}
    assert mtimes == {j: (st.runs_dir / j / "raw.parquet").stat().st_mtime_ns
                      for j in st.job_ids()}  # the runs themselves never change


def test_other_protocols_from_stored_raw_scores(grid, tmp_path: Path) -> None:
    st, jobs = _copy(grid, tmp_path)
    vid = next(j for j in jobs if j.modality == "video").job_id
    raw_m = RunStore(st.path, protocol="video-raw@2").record(vid)["metrics"]
    mm_m = st.record(vid)["metrics"]
    assert raw_m["protocol"] == "video-raw@2" and mm_m["protocol"] == "video-minmax@2"
    r = runner.invoke(app, ["store", "rescore", "--store", str(st.path),
                            "--protocol", "video-raw@2"])
    assert r.exit_code == 0 and "2 metrics computed" in r.output, r.output
    assert (st.metrics_dir / "video-raw@2" / f"{vid}.json").exists()
    r = runner.invoke(app, ["board", "--store", str(st.path), "--out", str(tmp_path / "b"),
                            "--no-site", "--bootstrap", "0", "--protocol", "video-raw@2"])
    assert r.exit_code == 0 and "video-raw@2" in (tmp_path / "b" / "leaderboard.csv").read_text()
    r = runner.invoke(app, ["store", "rescore", "--store", str(st.path),
                            "--protocol", "video-minmax@1"])
    assert r.exit_code == 2 and "retired" in r.output


def test_edited_metrics_fail_verify(grid, tmp_path: Path) -> None:
    st, jobs = _copy(grid, tmp_path)
    p = st.metrics_path(jobs[0].job_id, jobs[0].protocol)
    doc = json.loads(p.read_text())
    doc["metrics"]["auc"] = 0.999
    doc["sha256"] = self_digest(doc)  # even with a valid checksum
    p.write_text(json.dumps(doc))
    bad = st.verify()
    assert len(bad) == 1 and "differ from recomputed" in bad[0].reason
    assert st.verify(recompute=False) == []


def test_every_stored_eer_equals_the_full_roc_eer(grid) -> None:
    st = RunStore(grid[0])
    for jid in st.job_ids():
        rec = st.record(jid)
        sc = st.scores(jid).dropna(subset=["score"])
        assert rec["metrics"]["eer"] == pytest.approx(
            reference_eer(sc["label"].to_numpy(), sc["score"].to_numpy()), abs=1e-12)


def test_ids_that_are_not_job_ids_never_become_paths(grid, tmp_path: Path) -> None:
    st, jobs = _copy(grid, tmp_path)
    d = st.runs_dir / jobs[0].job_id
    rec = json.loads((d / "record.json").read_text())
    rec["job_id"] = "../../../outside"
    rec["sha256"] = self_digest(rec)
    (d / "record.json").write_text(json.dumps(rec))
    assert jobs[0].job_id not in st.job_ids()
    with pytest.raises(StoreError, match="not a job id"):
        st.run_dir("../x")
    with pytest.raises(StoreError, match="not a job id"):
        st.write_failure({"job_id": "../../x", "job": {}})
    assert not (tmp_path / "x.json").exists()


def test_old_stores_are_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "occbench-store.json").write_text('{"schema": "occbench.store/1"}')
    with pytest.raises(StoreError, match="Start a new store"):
        RunStore(tmp_path / "old").init()
    assert np.isfinite(0.0)


def test_compact_merge_keeps_every_image_metric_exactly(grid, tmp_path: Path) -> None:
    from occbench.leaderboard.table import aggregate, runs_frame

    src = RunStore(grid[0])
    dst = RunStore(tmp_path / "results")
    assert dst.merge_from(src, compact=True) == (6, 0)
    assert dst.merge_from(src, compact=True) == (0, 6)
    assert dst.verify() == []
    for jid in src.job_ids():
        a, b = src.record(jid), dst.record(jid)
        assert a["metrics"] == b["metrics"]
        prov = b["provenance"]
        if a["job"]["modality"] == "image":  # ranks: ties kept, order kept
            assert prov["raw_compacted"]["transform"] == "dense-rank"
            r = dst.raw(jid)[""]
            assert np.array_equal(r, np.round(r)) and r.min() == 1.0
        else:  # video runs keep their raw scores (min-max is not rank-invariant)
            assert "raw_compacted" not in prov
            np.testing.assert_array_equal(np.concatenate(list(src.raw(jid).values())),
                                          np.concatenate(list(dst.raw(jid).values())))
    # runs merged from elsewhere are marked self-reported on the board
    other = RunStore(tmp_path / "other")
    other.merge_from(src, self_reported=True)
    assert {other.origin(j) for j in other.job_ids()} == {"self-reported"}
    assert set(aggregate(runs_frame(other))["origin"]) == {"self-reported"}
    assert set(aggregate(runs_frame(dst))["origin"]) == {"verified"}


def test_merge_without_metrics_copies_only_what_cannot_be_derived(grid, tmp_path: Path
                                                                    ) -> None:
    """`store merge --no-metrics` (the committed results/): no metrics file is written, the
    runs are byte for byte the source's, and every reader gets the same metrics, computed."""
    src = RunStore(grid[0])
    for compact in (False, True):
        dst = RunStore(tmp_path / f"r{compact}")
        assert dst.merge_from(src, compact=compact, metrics=False) == (6, 0)
        assert list(dst.metrics_dir.rglob("*.json")) == []
        assert dst.verify() == []
        for jid in src.job_ids():
            assert dst.record(jid)["metrics"] == src.record(jid)["metrics"]
            if not compact:
                for n in ("record.json", "raw.parquet", "log.txt"):
                    assert (dst.runs_dir / jid / n).read_bytes() == \
                        (src.runs_dir / jid / n).read_bytes()
        assert list(dst.metrics_dir.rglob("*.json")) == []  # reading wrote none either

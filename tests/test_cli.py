"""The command line, through typer's runner: run → board → export, list, validate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from occbench.harness.cli.main import app
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

runner = CliRunner()

SPEC = """
name = "cli"
seeds = [0, 1]
[[methods]]
name = "iforest"
params = { n_estimators = 20 }
[[methods]]
name = "ocsvm"
[[datasets]]
name = "digits"
classes = ["0", "7"]
[[datasets]]
name = "toy-video"
params = { n_train = 2, n_test = 3, n_frames = 40 }
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "spec.toml").write_text(SPEC)
    r = runner.invoke(app, ["run", str(d / "spec.toml"), "--store", str(d / "store"),
                            "--runner", "serial"])
    assert r.exit_code == 0, r.output
    assert "12 ok, 0 failed" in r.output
    return d


def test_table_aucs_recompute_from_export(finished: Path) -> None:
    r = runner.invoke(app, ["board", "--store", str(finished / "store"), "--out",
                            str(finished / "board")])
    assert r.exit_code == 0, r.output
    board = pd.read_csv(finished / "board" / "leaderboard.csv")
    assert set(board.method) == {"iforest", "ocsvm"} and (board.seeds == 2).all()
    r = runner.invoke(app, ["export", "--store", str(finished / "store"), "--out",
                            str(finished / "exp")])
    assert r.exit_code == 0, r.output
    runs = pd.read_csv(finished / "exp" / "runs.csv")
    scores = pd.read_csv(finished / "exp" / "scores.csv", keep_default_na=True)
    per_run = {}
    for jid, g in scores.dropna(subset=["score"]).groupby("job_id"):
        per_run[jid] = roc_auc_score(g.label, g.score)
    runs["auc_re"] = runs.job_id.map(per_run)
    for (method, dataset), g in runs.groupby(["job.method", "job.dataset"]):
        # seed value = mean over classes; board = mean over seeds
        per_seed = g.groupby("job.seed").auc_re.mean()
        row = board[(board.method == method) & (board.dataset == dataset)].iloc[0]
        assert per_seed.mean() == pytest.approx(row.auc_mean, abs=1e-12)


def test_rerun_runs_nothing(finished: Path) -> None:
    r = runner.invoke(app, ["run", str(finished / "spec.toml"), "--store",
                            str(finished / "store"), "--runner", "serial", "--no-board"])
    assert r.exit_code == 0, r.output
    assert "ran 0 jobs" in r.output and "12 already done" in r.output


def test_bad_spec_fails_before_any_job(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SPEC.replace('name = "ocsvm"', 'name = "ocsmv"'))
    r = runner.invoke(app, ["run", str(tmp_path / "s.toml"), "--store", str(tmp_path / "st"),
                            "--runner", "serial"])
    assert r.exit_code == 2
    assert "did you mean 'ocsvm'" in r.output
    assert not (tmp_path / "st").exists()


def test_list_and_validate() -> None:
    r = runner.invoke(app, ["list", "methods"])
    assert r.exit_code == 0 and "ocsvm" in r.output and "occbench" in r.output
    r = runner.invoke(app, ["list", "protocols"])
    assert "video-minmax@2" in r.output
    r = runner.invoke(app, ["validate", "iforest", "-p", "n_estimators=10"])
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output
    r = runner.invoke(app, ["validate", "plugins_for_tests:NaNScores"])
    assert r.exit_code == 1 and "FAIL" in r.output and "non-finite" in r.output


@pytest.mark.parametrize("verb", ["run", "board", "export", "list", "validate", "store"])
def test_every_verb_has_help(verb: str) -> None:
    r = runner.invoke(app, [verb, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_store_prune_sets_aside_superseded_and_unlisted_runs(finished: Path,
                                                            tmp_path: Path) -> None:
    import shutil

    from occbench.harness.store.runstore import RunStore

    store = tmp_path / "store"
    shutil.copytree(finished / "store", store)
    st = RunStore(store)
    ids = st.job_ids()
    # a newer version of one run (what a refresh leaves beside the old one)
    old_id = next(j for j in ids if st.record(j)["job"]["method"] == "iforest")
    from occbench.leaderboard.synthetic import derive_run

    derive_run(st, old_id, {"method_version": "99"}, {"started_at": "2999-01-01T00:00:00Z"})
    # a spec that keeps only the ocsvm half of the grid
    (tmp_path / "keep.toml").write_text(SPEC.replace(
        '[[methods]]\nname = "iforest"\nparams = { n_estimators = 20 }\n', ""))

    r = runner.invoke(app, ["store", "prune", "--store", str(store)])
    assert r.exit_code == 0 and "1 of 13 runs would be set aside" in r.output
    assert len(st.job_ids()) == 13  # a dry run moves nothing
    r = runner.invoke(app, ["store", "prune", "--store", str(store), "--apply"])
    assert r.exit_code == 0, r.output
    assert old_id not in st.job_ids() and (store / "pruned" / old_id / "record.json").exists()
    r = runner.invoke(app, ["store", "prune", "--store", str(store),
                            "--spec", str(tmp_path / "keep.toml"), "--apply"])
    assert r.exit_code == 0, r.output
    left = [st.record(j)["job"]["method"] for j in st.job_ids()]
    assert set(left) == {"ocsvm"} and len(left) == 6
    assert len(list((store / "pruned").iterdir())) == 7  # nothing deleted
    # the pruned runs are out of the tables, and a new run of the same store still works
    r = runner.invoke(app, ["board", "--store", str(store), "--out", str(tmp_path / "b"),
                            "--no-site"])
    assert r.exit_code == 0 and "iforest" not in (tmp_path / "b" / "leaderboard.csv").read_text()

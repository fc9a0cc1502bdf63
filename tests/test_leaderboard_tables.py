"""Leaderboard tables from a synthetic store: intervals, costs, published vs reproduced."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from occbench.leaderboard import published as pub
from occbench.leaderboard.analysis import analyze, write_tables
from occbench.leaderboard.synthetic import SynthMethod, make_store
from occbench.leaderboard.table import (
    aggregate,
    display_table,
    per_class,
    per_seed,
    runs_frame,
    write_board,
)
from scipy import stats

METHODS = (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.2), SynthMethod("gamma", 0.6))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("lb") / "store"
    make_store(p, METHODS, seeds=(0, 1, 2), classes=3, n_images=120, n_videos=4, frames=120,
               gpus=0.5)
    return p


def test_aggregate_interval_is_t_interval_of_seed_class_means(store: Path) -> None:
    runs = runs_frame(store)
    assert len(runs) == 3 * 3 * (3 + 1)
    agg = aggregate(runs).set_index(["method", "dataset"])
    img = runs[(runs["label"] == "beta") & (runs["dataset"] == "synth-img")]
    seed_means = img.groupby("seed")["auc"].mean().to_numpy()
    row = agg.loc[("beta", "synth-img")]
    m, se = seed_means.mean(), seed_means.std(ddof=1) / math.sqrt(3)
    lo, hi = stats.t.interval(0.95, 2, loc=m, scale=se)
    assert row["auc_mean"] == pytest.approx(m)
    assert row["auc_std"] == pytest.approx(seed_means.std(ddof=1))
    assert (row["auc_lo"], row["auc_hi"]) == pytest.approx((max(lo, 0), min(hi, 1)))
    assert row["seeds"] == 3 and row["classes"] == 3
    # the best method is first within its dataset
    assert list(aggregate(runs).query("dataset == 'synth-img'")["method"]) == \
        ["alpha", "beta", "gamma"]


def test_costs_gpu_hours_and_memory(store: Path) -> None:
    runs = runs_frame(store)
    assert (runs["gpus"] == 0.5).all()
    assert runs["gpu_hours"].to_numpy() == pytest.approx(runs["wall_time_s"] * 0.5 / 3600)
    agg = aggregate(runs).set_index(["method", "dataset"])
    a = runs[(runs["label"] == "alpha") & (runs["dataset"] == "synth-img")]
    per_seed_wall = a.groupby("seed")["wall_time_s"].sum().mean()
    assert agg.loc[("alpha", "synth-img"), "wall_time_s"] == pytest.approx(per_seed_wall)
    assert agg.loc[("alpha", "synth-img"), "peak_rss_mb"] == a["peak_rss_mb"].max()
    assert agg.loc[("alpha", "synth-img"), "peak_gpu_mb"] == 500.0


def test_per_class_table(store: Path) -> None:
    pc = per_class(runs_frame(store))
    assert set(pc["dataset"]) == {"synth-img"}  # video runs have no class
    assert len(pc) == 3 * 3 and (pc["auc_n"] == 3).all()
    assert list(pc[pc["method"] == "alpha"]["normal_class"]) == ["0", "1", "2"]
    ps = per_seed(runs_frame(store))
    assert set(ps["n_classes"]) == {0, 3}


def test_analysis_comparisons_and_ranking(store: Path) -> None:
    a = analyze(store, n_boot=200)
    img = a.comparisons[a.comparisons["dataset"] == "synth-img"].set_index(["a", "b"])
    # 3 seeds × 3 classes = 9 matched pairs; alpha (d=2) beats gamma (d=0.6) on every one
    assert img.loc[("alpha", "gamma"), "n_pairs"] == 9
    assert img.loc[("alpha", "gamma"), "wins"] == 9
    assert img["p_holm"].ge(img["p"]).all()
    vid = a.comparisons[a.comparisons["dataset"] == "synth-vid"]
    assert (vid["n_pairs"] == 3).all() and not vid["significant"].any()  # 3 seeds: p >= 0.25
    assert a.friedman is not None and a.friedman.avg_rank["alpha"] == 1.0
    assert a.ranking_blocks == {"synth-img": "image@2", "synth-vid": "video-minmax@2"}
    assert set(a.p_best["dataset"]) == {"synth-img", "synth-vid"}
    files = write_tables(a, store.parent / "tables")
    assert {f.name for f in files} >= {"comparisons.csv", "ranks.csv",
                                        "published_vs_reproduced.csv"}


def test_write_board_keeps_its_contract(store: Path, tmp_path: Path) -> None:
    agg, files = write_board(store, tmp_path / "board")
    assert [f.name for f in files] == ["leaderboard.csv", "leaderboard.md"]
    md = files[1].read_text()
    assert "95 %" in md and "alpha" in md
    back = pd.read_csv(files[0])
    assert list(back["method"]) == list(agg["method"])


def _published(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "published.csv"
    p.write_text(",".join(pub.PUBLISHED_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return p


def test_published_join_flags_outside_interval(store: Path, tmp_path: Path) -> None:
    runs = runs_frame(store)
    rep = aggregate(runs).set_index(["method", "dataset"])
    inside = rep.loc[("alpha", "synth-img"), "auc_mean"]
    path = _published(tmp_path, [
        f"P1,Table 1,synth-img,image@2,auc,alpha,mean,{inside:.6f},",
        "P1,Table 1,synth-img,image@2,auc,alpha,0,0.10,far below",
        "P2,Table 3,synth-vid,as-published,auc_micro,beta,,0.99,",
        "P2,Table 3,synth-vid,as-published,auc_micro,zeta,,0.99,not in store",
        "P2,Table 3,cifar10,image@2,auc,gamma,3,0.70,",
    ])
    c = pub.compare(pub.load_published(path), runs)
    assert "zeta" not in set(c["method"])  # only methods with runs are joined
    row = c[(c["method"] == "alpha") & (c["normal_class"] == "mean")].iloc[0]
    assert row["status"] == "inside" and row["diff"] == pytest.approx(0.0, abs=1e-6)
    far = c[(c["method"] == "alpha") & (c["normal_class"] == "0")].iloc[0]
    assert far["status"] == "outside" and far["diff"] > 0.5
    vid = c[c["method"] == "beta"].iloc[0]  # as-published matches the video family
    assert vid["protocol"] == "video-minmax@2"
    assert vid["reproduced"] == pytest.approx(rep.loc[("beta", "synth-vid"), "auc_mean"])
    assert c[c["method"] == "gamma"].iloc[0]["status"] == "not reproduced"


def test_published_file_absent_or_broken(tmp_path: Path, store: Path) -> None:
    assert pub.load_published(tmp_path / "nope.csv").empty
    bad = tmp_path / "bad.csv"
    bad.write_text("paper,value\nx,0.5\n")
    with pytest.raises(pub.PublishedFormatError, match=r"bad\.csv.*missing columns"):
        pub.load_published(bad)
    pct = _published(tmp_path, ["P,T,d,image@2,auc,m,0,96.6,"])
    with pytest.raises(pub.PublishedFormatError, match="fractions"):
        pub.load_published(pct)
    assert pub.compare(pub.load_published(tmp_path / "nope.csv"), runs_frame(store)).empty


def test_shipped_published_table_loads() -> None:
    df = pub.load_published()
    if df.empty:
        pytest.skip("leaderboard/published.csv not written yet")
    assert df["value"].dropna().between(0, 1).all()


def test_empty_store(tmp_path: Path) -> None:
    st = tmp_path / "empty"
    make_store(st, methods=(), seeds=())
    a = analyze(st)
    assert a.agg.empty and a.friedman is None and a.comparisons.empty


def test_published_class_index_maps_to_plugin_class_names(store: Path, tmp_path: Path) -> None:
    # CIFAR-10 runs name their classes ("bird"); papers number them (2)
    runs = runs_frame(store)
    runs = runs[runs["dataset"] == "synth-img"].assign(dataset="cifar10")
    runs["normal_class"] = runs["normal_class"].map({"0": "airplane", "1": "automobile",
                                                     "2": "bird"})
    path = _published(tmp_path, ["P,Table 1,cifar10,image@2,auc,alpha,2,0.5,bird"])
    row = pub.compare(pub.load_published(path), runs).iloc[0]
    bird = runs[(runs["label"] == "alpha") & (runs["normal_class"] == "bird")]["auc"].mean()
    assert row["status"] != "not reproduced" and row["reproduced"] == pytest.approx(bird)


@pytest.mark.parametrize(("prov", "job", "gpus"), [
    ({"device": "cuda", "ray_resources": {"CPU": 1.0, "GPU": 0.25}}, {}, 0.25),  # Ray's share
    ({"device": "cpu", "ray_resources": {"CPU": 1.0}}, {}, 0.0),
    ({"device": "cpu"}, {"resources": {"gpus": 1}}, 0.0),  # declared, but ran on the CPU
    ({"device": "cuda:0", "resources": {"gpus": 0.5}}, {}, 0.5),
    ({"device": "cuda"}, {"resources": {"gpus": 2}}, 2.0),
    ({"device": "cuda"}, {}, 1.0),  # serial runner on a GPU, nothing declared
    ({}, {}, 0.0),
])
def test_declared_gpus(prov: dict, job: dict, gpus: float) -> None:
    from occbench.leaderboard.table import declared_gpus

    assert declared_gpus({"provenance": prov, "job": job}) == gpus


def _clone_run(store_path: Path, job_id: str, job: dict, auc: float, started_at: str) -> str:
    """Write a run like ``job_id``'s with changed job fields, AUC and start time (what a refresh
    after a new method version or changed data leaves beside the old run); returns its id."""
    import json

    from occbench.harness.run.spec import Job
    from occbench.harness.store.runstore import RunStore, self_digest

    st = RunStore(store_path)
    rec = st.run_record(job_id)
    new = Job.from_dict({**rec["job"], **job})
    rec = {**rec, "job_id": new.job_id, "job": new.to_dict(),
           "provenance": {**rec["provenance"], "started_at": started_at}}
    st.write_run(rec, st.raw(job_id), st.labels(job_id))
    st.write_metrics(new.job_id)
    # then pretend the method scored ``auc``: a metrics file with a valid checksum
    p = st.metrics_path(new.job_id, new.protocol)
    doc = json.loads(p.read_text())
    doc["metrics"]["auc"] = auc
    doc["sha256"] = self_digest(doc)
    p.write_text(json.dumps(doc))
    return new.job_id


def test_superseded_runs_and_label_collisions_never_average(tmp_path: Path) -> None:
    import plugins_for_tests  # noqa: F401  (test-mean)
    from occbench.harness.run.driver import run_jobs
    from occbench.harness.run.runner import SerialRunner
    from occbench.harness.run.spec import expand, spec_from_dict
    from occbench.harness.store.runstore import RunStore

    spec = spec_from_dict({"name": "t", "seeds": [0],
                           "methods": [{"name": "test-mean"}],
                           "datasets": [{"name": "digits", "classes": ["0", "1"]}]})
    path = tmp_path / "s"
    store = RunStore(path)
    jobs = expand(spec).jobs
    run_jobs(jobs, store, SerialRunner(in_process=True))
    before = runs_frame(path)
    assert len(before) == 2 and before.attrs["superseded"] == 0
    # a refresh after a method version bump: the old runs stay in the store
    for i, j in enumerate(jobs):
        _clone_run(path, j.job_id, {"method_version": "2"}, 0.5 + i / 10,
                   "2999-01-01T00:00:00Z")
    runs = runs_frame(path)
    assert runs.attrs["superseded"] == 2 and len(runs) == 2
    assert set(runs["method_version"]) == {"2"}
    agg = aggregate(runs).set_index("method")
    assert agg.loc["test-mean", "auc_mean"] == pytest.approx(0.55)  # not mixed with version 1
    assert len(runs_frame(path, include_superseded=True)) == 4
    # the same label with other parameters is another entry, named by what differs
    _clone_run(path, jobs[0].job_id,
               {"method_params": {"offset": 3.0}, "label": ""}, 0.9, "2999-01-02T00:00:00Z")
    runs = runs_frame(path)
    assert set(runs["label"]) == {"test-mean (offset=0.0)", "test-mean (offset=3.0)"}
    assert runs.attrs["superseded"] == 2
    agg = aggregate(runs).set_index("method")
    assert agg.loc["test-mean (offset=3.0)", "auc_mean"] == pytest.approx(0.9)
    assert agg.loc["test-mean (offset=0.0)", "auc_mean"] == pytest.approx(0.55)
    # a parameter a newer version added (with its default) is not another configuration
    _clone_run(path, jobs[1].job_id,
               {"method_params": {"offset": 0.0, "new_knob": 1}, "method_version": "3"}, 0.7,
               "2999-01-03T00:00:00Z")
    runs = runs_frame(path)
    assert set(runs["label"]) == {"test-mean (offset=0.0)", "test-mean (offset=3.0)"}
    assert runs.attrs["superseded"] == 3
    got = runs.set_index(["label", "normal_class"])["auc"]
    assert got[("test-mean (offset=0.0)", "1")] == pytest.approx(0.7)


def test_a_seed_missing_classes_is_left_out_of_the_mean(tmp_path: Path) -> None:
    import plugins_for_tests  # noqa: F401  (test-mean)
    from occbench.harness.run.driver import run_jobs
    from occbench.harness.run.runner import SerialRunner
    from occbench.harness.run.spec import expand, spec_from_dict
    from occbench.harness.store.runstore import RunStore

    spec = spec_from_dict({"name": "t", "seeds": [0, 1], "methods": [{"name": "test-mean"}],
                           "datasets": [{"name": "digits", "classes": ["0", "1"]}]})
    jobs = [j for j in expand(spec).jobs if not (j.seed == 1 and j.normal_class == "1")]
    run_jobs(jobs, RunStore(tmp_path / "s"), SerialRunner(in_process=True))
    runs = runs_frame(tmp_path / "s")
    ps = per_seed(runs)
    assert list(ps["seed"]) == [0] and ps.attrs["incomplete_seeds"] == 1
    row = aggregate(runs).iloc[0]
    assert row["seeds"] == 1
    assert row["auc_mean"] == pytest.approx(runs[runs.seed == 0]["auc"].mean())


def test_peak_memory_above_the_declared_is_flagged_on_the_board(tmp_path: Path) -> None:
    from occbench.harness.run.execute import memory_warnings
    from occbench.harness.store.runstore import RunStore
    from occbench.leaderboard.synthetic import SynthMethod, derive_run, make_store

    st = make_store(tmp_path / "s", [SynthMethod("m", 1.0)], video_datasets=(), seeds=(0,),
                    classes=2, n_images=40)
    assert not display_table(aggregate(runs_frame(st)))["method"].str.contains("memory").any()
    warn = memory_warnings(3000.0, 256.0)
    assert warn
    derive_run(RunStore(st.path), st.job_ids()[0], {"method_version": "2"},
               {"warnings": warn, "started_at": "2999-01-01T00:00:00Z"})
    shown = display_table(aggregate(runs_frame(st)))["method"]
    assert shown.str.contains(r"\[memory > declared\]").any()


def test_resolve_runs_keeps_the_newest_run_of_each_slot_in_any_row_order(tmp_path: Path
                                                                         ) -> None:
    from occbench.harness.store.runstore import RunStore
    from occbench.leaderboard.synthetic import derive_run
    from occbench.leaderboard.table import resolve_runs

    st = make_store(tmp_path / "s", (SynthMethod("alpha", 2.0),), seeds=(0, 1), classes=2,
                    n_images=30, n_videos=2, frames=60)
    ids = st.job_ids()
    newer = [derive_run(st, j, {"method_version": "2"}, {"started_at": "2999-01-01T00:00:00Z"})
             for j in ids[:3]]
    every = runs_frame(RunStore(st.path), include_superseded=True).drop(columns="superseded")
    cur, old = resolve_runs(every)
    assert set(newer) <= set(cur["job_id"]) and set(old["job_id"]) == set(ids[:3])
    assert list(cur["job_id"]) == sorted(cur["job_id"])
    shuffled = every.sample(frac=1.0, random_state=2).reset_index(drop=True)
    cur2, old2 = resolve_runs(shuffled)
    pd.testing.assert_frame_equal(cur2, cur, check_exact=True)
    pd.testing.assert_frame_equal(old2, old, check_exact=True)

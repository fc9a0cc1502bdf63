"""Reading a store fast for a board of 100,000 runs: parquet read into numpy, labels read once
per test set, and the row cache of ``runs_frame`` equal to a full read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from occbench.harness.store.runstore import RunStore, StoreError, _read_split
from occbench.leaderboard.synthetic import SynthMethod, derive_run, make_store
from occbench.leaderboard.table import runs_frame


def _split(df: pd.DataFrame, col: str) -> dict[str, np.ndarray]:
    """The reference: how the store read a column per video through pandas before (first-seen
    video order, each video's values in frame order)."""
    out: dict[str, np.ndarray] = {}
    vids = df["video_id"].astype(str).to_numpy()
    vals = df[col].to_numpy()
    frames = df["frame"].to_numpy()
    for v in dict.fromkeys(vids.tolist()):
        m = vids == v
        f, x = frames[m], vals[m]
        if len(f) and not np.array_equal(f, np.arange(len(f))):
            x = x[np.argsort(f, kind="stable")]
        out[v] = x
    return out


def _write(path: Path, vids: list[str], frames: list[int], vals: list[float | None]) -> None:
    pq.write_table(pa.table({"video_id": pa.array(vids, type=pa.large_string()),
                             "frame": pa.array(frames, type=pa.int64()),
                             "raw": pa.array(vals, type=pa.float64())}), path)


@pytest.mark.parametrize("vids,frames,vals", [
    (["a", "a", "b", "b", "b"], [0, 1, 0, 1, 2], [0.1, 0.2, 1.0, None, 3.0]),  # as written
    (["b", "a", "b", "a", "b"], [2, 1, 0, 0, 1], [3.0, 0.2, 1.0, 0.1, 2.0]),  # shuffled rows
    (["", "", ""], [0, 1, 2], [None, None, 5.0]),                             # images, nulls
    ([], [], []),                                                             # nothing
], ids=["grouped", "shuffled", "images-nulls", "empty"])
def test_numpy_read_equals_the_dataframe_read(tmp_path: Path, vids: list[str],
                                              frames: list[int], vals: list[float | None]
                                              ) -> None:
    p = tmp_path / "raw.parquet"
    _write(p, vids, frames, vals)
    want = _split(pd.read_parquet(p), "raw")
    got = _read_split(p, "raw", np.float64)
    assert list(got) == list(want)  # first-seen video order
    for k in want:
        assert got[k].dtype == np.float64
        assert np.array_equal(got[k], np.asarray(want[k], dtype=np.float64), equal_nan=True)


def test_labels_are_read_once_per_test_set_and_again_when_their_file_changes(
        tmp_path: Path) -> None:
    st = RunStore(tmp_path / "s").init()
    digest = st.write_labels({"v": np.array([0, 1, 1, 0], dtype=np.int8)})
    reader = RunStore(tmp_path / "s")
    a = reader.labels_by_digest(digest)
    b = reader.labels_by_digest(digest)
    assert a["v"] is b["v"] and not a["v"].flags.writeable  # one copy, shared read-only
    with pytest.raises(ValueError):
        a["v"][0] = 1
    # damaged on disk after the first read: the next read notices (the file changed)
    p = st.labels_dir / f"{digest}.parquet"
    data = bytearray(p.read_bytes())
    p.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(StoreError, match=r"unreadable labels|do not match"):
        reader.labels_by_digest(digest)


def test_row_cache_reads_back_the_frame_of_a_full_read(tmp_path: Path) -> None:
    st = make_store(tmp_path / "store", (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0)),
                    image_datasets=("img",), video_datasets=("vid",), seeds=(0, 1),
                    classes=2, n_images=40, n_videos=2, frames=120)
    full = runs_frame(RunStore(st.path), include_superseded=True)
    c1, c2 = tmp_path / "c1.json", tmp_path / "c2.json"
    first = runs_frame(RunStore(st.path), include_superseded=True, cache_out=c1)
    again = runs_frame(RunStore(st.path), include_superseded=True, cache_in=c1, cache_out=c2)
    pd.testing.assert_frame_equal(first, full, check_exact=True)
    pd.testing.assert_frame_equal(again, full, check_exact=True)
    assert c1.read_bytes() == c2.read_bytes()
    # a superseding run and an edited (now unverifiable) one: the cache does not hide either
    ids = st.job_ids()
    new = derive_run(st, ids[0], {"method_version": "9.9"}, {"started_at": "2999-01-01"})
    rec = st.runs_dir / ids[1] / "record.json"
    doc = json.loads(rec.read_text())
    doc["job"]["seed"] += 5  # edited by hand: its checksum no longer matches
    rec.write_text(json.dumps(doc))
    after = runs_frame(RunStore(st.path, on_bad=lambda b: None), include_superseded=True,
                       cache_in=c2)
    fresh = runs_frame(RunStore(st.path, on_bad=lambda b: None), include_superseded=True)
    pd.testing.assert_frame_equal(after, fresh, check_exact=True)
    assert new in set(after["job_id"]) and ids[1] not in set(after["job_id"])
    # a cache of another store is not used
    other = make_store(tmp_path / "other", (SynthMethod("gamma", 1.5),), image_datasets=("img",),
                       video_datasets=(), seeds=(0,), classes=2, n_images=40)
    pd.testing.assert_frame_equal(runs_frame(other, cache_in=c2), runs_frame(other),
                                  check_exact=True)


@pytest.mark.parametrize("module", ["board", "data", "store", "cluster"])
def test_every_command_is_there_whichever_cli_module_is_imported_first(module: str) -> None:
    """A sub-command module imported before ``main`` (as a test importing
    ``occbench.harness.cli.board`` does) still adds its commands."""
    code = (f"import occbench.harness.cli.{module}\n"
            "import typer.main\nfrom occbench.harness.cli.main import app\n"
            "print(' '.join(sorted(typer.main.get_command(app).commands)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert {"board", "data", "store", "refresh", "sweep", "run"} <= set(out)


def test_a_cold_read_in_parallel_processes_equals_the_serial_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many runs missing from the row cache are read in processes on every core: the same
    frame, the same bad entries reported (one damaged run), and the runs known as verified."""
    from occbench.leaderboard import table

    st = make_store(tmp_path / "store", (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0)),
                    image_datasets=("img",), video_datasets=("vid",), seeds=(0, 1),
                    classes=2, n_images=40, n_videos=2, frames=120)
    bad = st.job_ids()[3]
    (st.runs_dir / bad / "log.txt").write_text("edited")
    serial_bad: list[str] = []
    serial = runs_frame(RunStore(st.path, on_bad=lambda b: serial_bad.append(b.line())))
    monkeypatch.setattr(table, "PARALLEL_READ_MIN", 2)
    monkeypatch.setattr(table.os, "sched_getaffinity", lambda pid: {0, 1})
    par_bad: list[str] = []
    reader = RunStore(st.path, on_bad=lambda b: par_bad.append(b.line()))
    from concurrent import futures

    pools: list[int] = []
    real_pool = futures.ProcessPoolExecutor

    def counting_pool(n: int, **kw: object) -> futures.ProcessPoolExecutor:
        pools.append(n)
        return real_pool(n, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(futures, "ProcessPoolExecutor", counting_pool)
    par = runs_frame(reader)
    assert pools == [2]  # really read in two processes
    pd.testing.assert_frame_equal(par, serial, check_exact=True)
    assert par_bad == serial_bad and len(par_bad) == 1 and bad in par_bad[0]
    assert set(reader._verified) == set(serial["job_id"])


def test_t_interval_with_cached_quantiles_equals_scipy_bit_for_bit() -> None:
    from occbench.leaderboard.stats import t_interval
    from scipy import stats

    rng = np.random.default_rng(0)
    for i in range(500):
        n = int(rng.integers(2, 40))
        x = rng.random(n) * rng.random()
        level = (0.9, 0.95, 0.99)[i % 3]
        mean, sem = float(x.mean()), float(x.std(ddof=1)) / np.sqrt(n)
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sem)
        assert t_interval(x, level) == (float(lo), float(hi))


def test_a_synthetic_store_can_share_labels_per_test_set_as_real_stores_do(
        tmp_path: Path) -> None:
    """``shared_labels``: every run of a test set (dataset and class) has the same labels, so
    the store holds one labels file per test set (by default, one per run: the worst case)."""
    from occbench.leaderboard.synthetic import SynthMethod, make_store

    methods = (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0))
    kw = dict(image_datasets=("img",), video_datasets=("vid",), seeds=(0, 1), classes=2,
              n_images=40, n_videos=2, frames=50)
    shared = make_store(tmp_path / "shared", methods, shared_labels=True, **kw)
    per_run = make_store(tmp_path / "per-run", methods, **kw)
    assert len(list(shared.labels_dir.iterdir())) == 2 + 1  # 2 image classes, 1 video set
    assert len(list(per_run.labels_dir.iterdir())) == len(per_run.job_ids()) == 12
    for st in (shared, per_run):
        m = [st.record(j)["metrics"] for j in st.job_ids()
             if st.record(j)["job"]["method"] == "alpha"]
        assert len(m) == 6 and all(x.get("auc", x.get("auc_micro")) > 0.6 for x in m)

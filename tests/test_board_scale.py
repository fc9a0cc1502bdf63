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


def _small_store(path: Path) -> RunStore:
    return make_store(path, (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0)),
                      image_datasets=("img",), video_datasets=("vid",), seeds=(0, 1),
                      classes=2, n_images=40, n_videos=2, frames=120)


def test_statcheck_tells_which_cached_keys_still_match_in_process_and_as_a_helper(
        tmp_path: Path) -> None:
    """The stat check of cached rows (``leaderboard/_statcheck.py``): ``1`` for a run whose
    files are as the key says, ``0`` for one whose file changed or went; the helper program
    (``python -I -S``, no package imported) answers as the in-process check does."""
    from occbench.leaderboard import _statcheck, table

    st = _small_store(tmp_path / "store")
    keys: dict[str, str] = {}
    runs_frame(RunStore(st.path), keys_out=keys)
    k = table._Keys(st)
    header = [k.runs, k.ld, k.od, *k.names]
    proto = {j: st.view_protocol(st.run_record(j)) for j in keys}
    ids = sorted(keys)
    lines = [f"{j}\t{k.metrics_dir(proto[j])}\t0\t{keys[j]}" for j in ids]
    assert _statcheck.check(header, lines) == b"1" * len(ids)
    log = st.runs_dir / ids[0] / "log.txt"
    log.write_text(log.read_text() + "x")  # rewritten in place
    (st.runs_dir / ids[1] / "raw.parquet").unlink()  # gone
    lines.append(f"{ids[2]}\t{k.metrics_dir(proto[ids[2]])}\t0\t{keys[ids[2]]}x")  # other key
    want = b"00" + b"1" * (len(ids) - 2) + b"0"
    assert _statcheck.check(header, lines) == want
    helper = subprocess.run([sys.executable, "-I", "-S", _statcheck.__file__],
                            input=("\t".join(header) + "\n" + "\n".join(lines)).encode(),
                            capture_output=True, timeout=60, check=True)
    assert helper.stdout == want


def test_the_row_cache_is_checked_in_helper_processes_with_the_same_frame(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PARALLEL_CHECK_MIN cached rows the stat check is shared with helper processes:
    the same frame as a full read, and a run rewritten in place is read (and found bad)."""
    from occbench.leaderboard import table

    st = _small_store(tmp_path / "store")
    c1, c2 = tmp_path / "c1.arrow", tmp_path / "c2.arrow"
    runs_frame(RunStore(st.path), cache_out=c1)
    bad = st.job_ids()[2]
    (st.runs_dir / bad / "log.txt").write_text("edited")
    monkeypatch.setattr(table, "PARALLEL_CHECK_MIN", 2)
    monkeypatch.setattr(table.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    helpers: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        helpers.append(list(args))
        return real_popen(args, **kw)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    reported: list[str] = []
    cached = runs_frame(RunStore(st.path, on_bad=lambda b: reported.append(b.line())),
                        cache_in=c1, cache_out=c2)
    assert len(helpers) == 2 and all(h[1:3] == ["-I", "-S"] for h in helpers)
    full = runs_frame(RunStore(st.path, on_bad=lambda b: None))
    pd.testing.assert_frame_equal(cached, full, check_exact=True)
    assert len(reported) == 1 and bad in reported[0] and bad not in set(cached["job_id"])
    # the next check of that cache: the same frame, every good row from the cache (only
    # the bad run, which no cache holds, is read again)
    reads: list[str] = []
    real_read = table._read_one

    def counting_read(st_: RunStore, keys: object, jid: str) -> object:
        reads.append(jid)
        return real_read(st_, keys, jid)  # type: ignore[arg-type]

    monkeypatch.setattr(table, "_read_one", counting_read)
    again = runs_frame(RunStore(st.path, on_bad=lambda b: None), cache_in=c2)
    pd.testing.assert_frame_equal(again, full, check_exact=True)
    assert reads == [bad]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-schema"])
def test_a_damaged_row_cache_is_ignored(tmp_path: Path, damage: str) -> None:
    st = _small_store(tmp_path / "store")
    cache = tmp_path / "c.arrow"
    full = runs_frame(RunStore(st.path), cache_out=cache)
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "garbage":
        cache.write_bytes(b"not an arrow file")
    else:  # a well-formed Arrow file of other columns
        import pyarrow.ipc

        t = pa.table({"job_id": pa.array(["x"])})
        with pa.OSFile(str(cache), "wb") as f, pyarrow.ipc.new_file(f, t.schema) as w:
            w.write_table(t)
    pd.testing.assert_frame_equal(runs_frame(RunStore(st.path), cache_in=cache), full,
                                  check_exact=True)


def test_odd_record_values_fit_their_columns_alike_with_and_without_the_cache(
        tmp_path: Path) -> None:
    """Records are plugin- and user-made text: a class given as a number is text, a wall
    time given as text is a number, and a seed that is not an integer leaves the run out
    with a line saying why; a cached frame equals the full read."""
    st = _small_store(tmp_path / "store")
    img = next(j for j in st.job_ids() if st.run_record(j)["job"]["modality"] == "image")
    as_number = derive_run(st, img, {"normal_class": 7, "seed": 41},
                           {"wall_time_s": "12.5", "n_parameters": "many"})
    odd_seed = derive_run(st, img, {"seed": "3"})
    reported: list[str] = []
    c = tmp_path / "c.arrow"
    full = runs_frame(RunStore(st.path, on_bad=lambda b: reported.append(b.line())),
                      cache_out=c)
    cached = runs_frame(RunStore(st.path, on_bad=lambda b: None), cache_in=c)
    pd.testing.assert_frame_equal(cached, full, check_exact=True)
    row = full.set_index("job_id").loc[as_number]
    assert row["normal_class"] == "7" and row["wall_time_s"] == 12.5
    assert np.isnan(row["n_parameters"])
    assert odd_seed not in set(full["job_id"])
    assert len(reported) == 1 and odd_seed in reported[0] and "seed" in reported[0]


def test_a_helper_that_cannot_start_leaves_its_share_to_the_building_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from occbench.leaderboard import _statcheck, table

    st = _small_store(tmp_path / "store")
    c = tmp_path / "c.arrow"
    full = runs_frame(RunStore(st.path), cache_out=c)
    monkeypatch.setattr(table, "PARALLEL_CHECK_MIN", 2)
    monkeypatch.setattr(table.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(_statcheck, "__file__", str(tmp_path / "gone.py"))
    checked: list[int] = []
    real_check = _statcheck.check

    def counting(header: list[str], lines: list[str]) -> bytes:
        checked.append(len(lines))
        return real_check(header, lines)

    monkeypatch.setattr(_statcheck, "check", counting)
    pd.testing.assert_frame_equal(runs_frame(RunStore(st.path), cache_in=c), full,
                                  check_exact=True)
    assert sum(checked) == len(full) and len(checked) == 2  # its share, then the helper's

"""The driver's per-job leaks and costs (issue 13, "Scale"): nothing accumulates per job
(loggers, lock files), claims stay exclusive although lock files are deleted, and the fast
metrics equal scikit-learn's."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import plugins_for_tests  # noqa: F401  (registers test-mean)
import pytest
from occbench.harness.run.capture import JOB_LOGGER_PREFIX, job_logger, release_job_logger
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import Job, expand, spec_from_dict
from occbench.harness.store.runstore import JobLock, RangeClaim, RunStore


def _jobs(n: int) -> list[Job]:
    spec = spec_from_dict({"name": "scale", "seeds": list(range(n)),
                           "methods": [{"name": "test-mean"}],
                           "datasets": [{"name": "digits", "classes": ["0"]}]})
    return expand(spec).jobs


def _job_loggers() -> list[str]:
    return [n for n in logging.Logger.manager.loggerDict if n.startswith(JOB_LOGGER_PREFIX)]


def _placeholder_children() -> int:
    """Loggers still listed by the placeholders above the job loggers."""
    n = 0
    for name in ("occbench.job", "occbench"):
        ph = logging.Logger.manager.loggerDict.get(name)
        if isinstance(ph, logging.PlaceHolder):
            n += sum(1 for lg in ph.loggerMap if lg.name.startswith(JOB_LOGGER_PREFIX))
    return n


# -- leaks ---------------------------------------------------------------------------------


def test_no_logger_or_lock_file_left_after_many_jobs(tmp_path: Path) -> None:
    jobs = _jobs(25)
    before = set(_job_loggers())
    store = RunStore(tmp_path / "s")
    summary = run_jobs(jobs, store, SerialRunner(in_process=True, sealed="off"))
    assert summary.ok == len(jobs), summary.failures
    # the jobs ran in this process: each made a logger, and each was forgotten at its end
    assert set(_job_loggers()) - before == set()
    assert _placeholder_children() == 0
    assert _lock_files(store) == []
    assert len(store.job_ids()) == len(jobs)


def test_job_logger_children_reach_the_handler_and_are_forgotten_too() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    h = Keep()
    lg = job_logger("0123456789abcdef0123", h)
    lg.getChild("fit").info("from a child")
    lg.info("from the job")
    assert records == ["from a child", "from the job"]
    release_job_logger(lg, h)
    assert not [n for n in logging.Logger.manager.loggerDict
                if n.startswith(f"{JOB_LOGGER_PREFIX}0123456789abcdef0123")]
    assert _placeholder_children() == 0
    assert h not in lg.handlers
    lg.info("after the job")  # a method that kept its logger still has a working object
    assert records[-1] == "from the job"


# -- claims ----------------------------------------------------------------------------------


def _lock_files(store: RunStore) -> list[str]:
    """What a store's locks/ holds besides the shared, empty claims file."""
    left = []
    for p in store.locks_dir.iterdir():
        if p.name != "claims" or p.stat().st_size:
            left.append(p.name)
    return left


def test_range_claims_are_exclusive_per_job_and_leave_nothing_per_job(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s").init()
    one, other = "0123456789abcdef0123", "fedcba98765432100123"
    a, b, c = store.job_lock(one), store.job_lock(one), store.job_lock(other)
    assert isinstance(a, RangeClaim)
    assert a.acquire()
    assert not b.acquire()  # same job, same process, another claim: held (not per process)
    assert c.acquire()  # another job: its own byte
    a.release()
    assert b.acquire()  # released by closing a's descriptor; c's claim is untouched
    assert not store.job_lock(other).acquire()
    b.release(), c.release()
    a.release()  # a second release is a no-op
    assert sorted(p.name for p in store.locks_dir.iterdir()) == ["claims"]
    assert (store.locks_dir / "claims").stat().st_size == 0


def _hold_claim(store: str, job_id: str) -> None:
    assert RunStore(store).job_lock(job_id).acquire()
    time.sleep(120)


def test_a_claim_held_by_a_killed_driver_is_free_again(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s").init()
    jid = "0123456789abcdef0123"
    proc = mp.get_context("fork").Process(target=_hold_claim, args=(str(store.path), jid))
    proc.start()
    deadline = time.monotonic() + 60
    while True:
        lock = store.job_lock(jid)
        if not lock.acquire():
            break  # the child holds it
        lock.release()
        assert time.monotonic() < deadline, "the child never took the claim"
        time.sleep(0.05)
    proc.kill()
    proc.join(10)
    lock = store.job_lock(jid)
    assert lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()


def test_job_lock_is_exclusive_and_deleted_on_release(tmp_path: Path) -> None:
    p = tmp_path / "a.lock"
    a, b = JobLock(p), JobLock(p)
    assert a.acquire()
    assert p.exists()
    assert not b.acquire()  # held: never waited for
    a.release()
    assert not p.exists()
    assert b.acquire()
    b.release()
    a.release()  # a second release is a no-op
    assert not p.exists()


def test_job_lock_refuses_a_file_deleted_between_open_and_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race that makes deleting lock files unsafe without a check: B opens the file, the
    holder A releases (deletes it), C claims the new file, then B locks the deleted one. B must
    not count that as a claim while C holds the job."""
    import fcntl

    p = tmp_path / "a.lock"
    a, b, c = JobLock(p), JobLock(p), JobLock(p)
    assert a.acquire()
    real = fcntl.flock
    calls = {"n": 0}

    def flock(fd: int, op: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # B has opened A's file and is about to lock it
            a.release()
            assert c.acquire()  # C locks the new file at the path (nested call, n == 2)
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    assert not b.acquire()  # locked A's deleted file, retried, found C's held
    monkeypatch.setattr(fcntl, "flock", real)
    assert c.held and not b.held
    c.release()
    assert b.acquire()
    b.release()


def _claim_loop(store: str, ids: list[str], rounds: int, journal: str) -> None:
    st = RunStore(store)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    for _ in range(rounds):
        for jid in ids:
            lock = st.job_lock(jid)
            if lock.acquire():
                os.write(fd, f"+{jid} {os.getpid()}\n".encode())
                os.write(fd, f"-{jid} {os.getpid()}\n".encode())
                lock.release()
    os.close(fd)


def test_claims_stay_exclusive_across_processes_with_lock_files_deleted(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s").init()
    ids = [f"{i:020x}" for i in range(4)]
    journal = tmp_path / "journal"
    journal.touch()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_claim_loop, args=(str(store.path), ids, 150, str(journal)))
             for _ in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    holder: dict[str, str | None] = dict.fromkeys(ids)
    takes = 0
    for line in journal.read_text().splitlines():
        sign, jid, pid = line[0], line[1:21], line.split()[1]
        if sign == "+":
            assert holder[jid] is None, f"{jid} claimed by {pid} while {holder[jid]} held it"
            holder[jid] = pid
            takes += 1
        else:
            assert holder[jid] == pid
            holder[jid] = None
    assert takes > 0
    assert _lock_files(store) == []


# -- metrics ---------------------------------------------------------------------------------


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(13)
    out = []
    for n in (2, 3, 10, 719, 5000):
        y = rng.integers(0, 2, n)
        y[0], y[-1] = 0, 1  # both classes
        out.append((f"random-{n}", y, rng.normal(size=n)))
        out.append((f"tied-{n}", y, rng.integers(0, 4, n).astype(np.float64)))
        out.append((f"constant-{n}", y, np.full(n, 0.5)))
        out.append((f"separable-{n}", y, y + 0.1 * rng.random(n)))
        out.append((f"reversed-{n}", y, -y.astype(np.float64)))
    y = rng.integers(0, 2, 1000)
    y[:2] = [0, 1]
    out.append(("imbalanced", (rng.random(1000) < 0.01).astype(int) | (np.arange(1000) == 0),
                rng.normal(size=1000)))
    out.append(("tiny-values", y, rng.normal(size=1000) * 1e-300))
    out.append(("huge-values", y, rng.normal(size=1000) * 1e300))
    out.append(("int8-labels", y.astype(np.int8), rng.normal(size=1000)))
    out.append(("bool-labels", y.astype(bool), rng.normal(size=1000)))
    return out


@pytest.mark.parametrize(("name", "y", "s"), _cases(), ids=[c[0] for c in _cases()])
def test_fast_auc_and_eer_equal_sklearn_bit_for_bit(name: str, y: np.ndarray,
                                                    s: np.ndarray) -> None:
    from occbench.harness.scoring.protocols import auc_and_eer, eer, roc_auc, roc_points
    from sklearn.metrics import roc_auc_score, roc_curve

    assert roc_auc(y, s) == float(roc_auc_score(y, s))
    fpr0, tpr0, _ = roc_curve(y, s)  # the board's ROC plot: the same points
    fpr1, tpr1 = roc_points(y, s)
    assert np.array_equal(fpr0, fpr1) and np.array_equal(tpr0, tpr1)
    # the EER as computed before (scikit-learn's full ROC)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    d = fpr - (1.0 - tpr)
    i = int(np.argmax(d >= 0.0))
    if d[i] == 0.0 or i == 0:
        want = float(fpr[i])
    else:
        t = -d[i - 1] / (d[i] - d[i - 1])
        want = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    assert eer(y, s) == want
    assert auc_and_eer(y, s) == (roc_auc(y, s), want)  # the driver's one-sort path


# -- thread limits ---------------------------------------------------------------------------


def test_thread_limits_are_applied_with_one_library_scan(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import sys
    import types

    import threadpoolctl
    from occbench.harness.run import execute

    monkeypatch.setattr(execute, "_controller", None)
    before = threadpoolctl.threadpool_info()
    seen = []
    for n in (1, 2, 1):
        with execute.cpu_threads(n):
            info = threadpoolctl.threadpool_info()  # a fresh scan: what really is in force
            assert info and all(lib["num_threads"] == n for lib in info)
        assert execute._controller is not None
        seen.append(execute._controller[1])
    assert threadpoolctl.threadpool_info() == before  # restored after each job
    assert seen[0] is seen[1] is seen[2]  # one scan for the three jobs
    # a new import (it may bring a BLAS of its own) rescans once
    monkeypatch.setitem(sys.modules, "occbench_fake_ext", types.ModuleType("occbench_fake_ext"))
    with execute.cpu_threads(1):
        pass
    again = execute._controller[1]
    with execute.cpu_threads(1):
        pass
    assert again is not seen[0] and execute._controller[1] is again


# -- store writes ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    {"": np.random.default_rng(0).normal(size=719)},
    {"a": np.r_[np.nan, np.arange(50.0), np.nan], "b": np.ones(3), "c": np.array([])},
    {},
    {f"v{i}": np.r_[[np.nan] * 7, np.random.default_rng(i).normal(size=40 * i + 1)]
     for i in range(12)},
], ids=["image", "video-nan-empty", "none", "many-videos"])
def test_raw_parquet_is_byte_identical_to_the_dataframe_path(tmp_path: Path,
                                                              raw: dict[str, np.ndarray]) -> None:
    from occbench.harness.store.runstore import _raw_table, _write_parquet, raw_frame

    _write_parquet(raw_frame(raw), tmp_path / "old.parquet")
    _write_parquet(_raw_table(raw), tmp_path / "new.parquet")
    assert (tmp_path / "old.parquet").read_bytes() == (tmp_path / "new.parquet").read_bytes()


def test_a_store_written_by_the_fast_path_verifies_and_reads_back(tmp_path: Path) -> None:
    jobs = _jobs(6)
    store = RunStore(tmp_path / "s")
    assert run_jobs(jobs, store, SerialRunner(in_process=True, sealed="off")).ok == 6
    fresh = RunStore(tmp_path / "s")  # a reader with no cache of what was written
    assert fresh.verify() == []
    for j in jobs:
        m = fresh.metrics(j.job_id)
        assert m is not None and 0.0 <= m["auc"] <= 1.0
        assert fresh.scores(j.job_id)["raw"].notna().all()


def test_damaged_labels_are_rewritten_although_this_store_wrote_them(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s").init()
    labels = {"": np.array([0, 1, 1, 0], dtype=np.int8)}
    digest = store.write_labels(labels)
    p = store.labels_dir / f"{digest}.parquet"
    good = p.read_bytes()
    p.write_bytes(b"garbage")  # changed on disk after this object verified it
    assert store.write_labels(labels) == digest
    assert p.read_bytes() == good


def test_a_file_system_without_locks_is_one_clear_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Some FUSE and network mounts refuse byte-range locks: the run stops with one line that
    names the claims file and the fix, before any job runs, and the store is untouched."""
    import errno
    import fcntl

    from occbench.harness.cli.main import app
    from occbench.harness.store.runstore import StoreError
    from typer.testing import CliRunner

    real = fcntl.fcntl

    def no_locks(fd: int, cmd: int, arg: object = 0) -> object:
        if cmd == getattr(fcntl, "F_OFD_SETLK", None):
            raise OSError(errno.ENOLCK, "No locks available")
        return real(fd, cmd, arg)  # type: ignore[arg-type]

    store = RunStore(tmp_path / "s").init()
    monkeypatch.setattr(fcntl, "fcntl", no_locks)
    with pytest.raises(StoreError, match="does not support file locks"):
        store.job_lock("0" * 20).acquire()
    r = CliRunner().invoke(app, ["run", "-m", "iforest", "-d", "digits", "--classes", "0",
                                 "--store", str(tmp_path / "s"), "--unsealed"])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: cannot lock") and "claims" in line and "--store" in line
    assert store.job_ids() == []


# -- store writers -------------------------------------------------------------------------


def test_runs_written_beside_the_runner_are_stored_before_they_are_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With store-writer threads, a job is reported ok, and its claim released, only once its
    run is in the store; every run is there when run_jobs returns, and the runs are the same
    as those written inline (``writers=0``)."""
    jobs = _jobs(12)
    store = RunStore(tmp_path / "threads")
    slow = store.write_run
    writer_threads: set[str] = set()

    def write_run(*a: object, **kw: object) -> bool:
        import threading

        writer_threads.add(threading.current_thread().name)
        time.sleep(0.02)  # a slow disk: the runner goes on meanwhile
        return slow(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_run", write_run)
    claims = RunStore(store.path)  # another driver's view of the same store
    reported: list[str] = []

    def progress(event: str, job: Job, out: object) -> None:
        if event == "ok":
            assert store.has(job.job_id)
            lock = claims.job_lock(job.job_id)
            # the driver still holds the claim while it reports (released right after)
            assert not lock.acquire()
            reported.append(job.job_id)

    s = run_jobs(jobs, store, SerialRunner(in_process=True, sealed="off"), progress=progress,
                 writers=2)
    assert s.ok == len(jobs) and s.failed == 0, s.failures
    assert sorted(reported) == sorted(j.job_id for j in jobs)
    assert writer_threads and all(n.startswith("occbench-store") for n in writer_threads)
    assert store.job_ids() == sorted(j.job_id for j in jobs)
    for j in jobs:  # every claim is free again
        lock = claims.job_lock(j.job_id)
        assert lock.acquire()
        lock.release()
    inline = RunStore(tmp_path / "inline")
    assert run_jobs(jobs, inline, SerialRunner(in_process=True, sealed="off"), writers=0).ok \
        == len(jobs)
    for j in jobs:
        a, b = store.record(j.job_id), inline.record(j.job_id)
        assert a["metrics"] == b["metrics"]
        assert a["files"]["raw.parquet"] == b["files"]["raw.parquet"]


def test_a_full_disk_found_by_a_writer_thread_stops_the_run_and_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from occbench.harness.store.runstore import DiskFullError

    jobs = _jobs(10)
    store = RunStore(tmp_path / "s")
    real = store.write_run
    calls = [0]

    def write_run(record: dict, *a: object, **kw: object) -> bool:
        calls[0] += 1
        if calls[0] >= 4:
            raise DiskFullError(f"{store.path}: no space left on the device; free some")
        return real(record, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_run", write_run)
    s = run_jobs(jobs, store, SerialRunner(in_process=True, sealed="off"), writers=2)
    assert s.stop_reason is not None and "no space left" in s.stop_reason
    assert s.ok == 3 and s.failed >= 1 and s.ok + s.failed < len(jobs)
    # what was reported ok is in the store; nothing else is, and no claim is left held
    assert len(store.job_ids()) == 3
    for j in jobs:
        lock = RunStore(store.path).job_lock(j.job_id)
        assert lock.acquire()
        lock.release()
    monkeypatch.setattr(store, "write_run", real)  # space again: the rerun finishes the rest
    again = run_jobs(jobs, store, SerialRunner(in_process=True, sealed="off"))
    assert again.already_done == 3 and again.ok == len(jobs) - 3


@pytest.mark.parametrize("layout", ["as-written", "interleaved", "row-groups", "plain-ids"])
def test_split_read_equals_a_pandas_read_of_any_layout(tmp_path: Path, layout: str) -> None:
    """Reading a scores file per video (dictionary codes, blocks in file order) gives what a
    pandas group-by of the same file gives, videos in first-seen order, frames sorted: also
    for files another writer made (rows interleaved or shuffled, several row groups, video
    ids not dictionary-encoded)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from occbench.harness.store.runstore import _read_split, _write_parquet

    rng = np.random.default_rng(3)
    parts = [pd.DataFrame({"video_id": v, "frame": np.arange(n, dtype=np.int64),
                           "raw": rng.standard_normal(n)})
             for v, n in (("b_clip", 40), ("a_clip", 25), ("", 7), ("z", 1))]
    df = pd.concat(parts, ignore_index=True)
    p = tmp_path / "raw.parquet"
    if layout == "as-written":
        _write_parquet(df, p)
    else:
        if layout == "interleaved":
            df = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
        t = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(t, p, row_group_size=16 if layout == "row-groups" else None,
                       use_dictionary=layout != "plain-ids")
    got = _read_split(p, "raw", np.float64)
    want = {str(v): g.sort_values("frame", kind="stable")["raw"].to_numpy()
            for v, g in df.groupby("video_id", sort=False)}
    assert list(got) == list(want)
    for v in want:
        np.testing.assert_array_equal(got[v], want[v])

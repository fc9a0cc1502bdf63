"""Content fingerprints (job identity follows the bytes) and the per-file digest cache."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from occbench.datasets import digest, fakes
from occbench.datasets.builtin import Digits
from occbench.datasets.images import CIFAR10, CIFAR100, MNIST
from occbench.datasets.video import Ped2


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


def _age(folder: Path, seconds: float = 3600.0) -> None:
    """Set every file's mtime into the past, so the digest cache may remember it (files modified
    within the last RACY_WINDOW_NS are re-hashed every time, by design)."""
    t = time.time() - seconds
    for p in folder.rglob("*"):
        if p.is_file():
            os.utime(p, (t, t))


class _Counter:
    """Wraps ``digest.hash_file``, the one place file bytes are read, and counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Path] = []
        real = digest.hash_file

        def counted(path: str | Path, *args: object) -> str:
            self.calls.append(Path(path))
            return real(path, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(digest, "hash_file", counted)


def _ucsd_m(folder: Path) -> Path:
    return folder / "ped2" / "UCSDped2.m"


# --------------------------------------------------------------------------------------------
# identity follows content
# --------------------------------------------------------------------------------------------


def test_one_changed_label_range_changes_the_fingerprint(tmp_path: Path) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", test_lengths=(10, 7), anomalous=[(3, 10), (0, 4)],
                            label_files=("m",))
    ds = Ped2(tmp_path)
    before, labels_before = ds.fingerprint(), ds.test_labels()
    m = _ucsd_m(tmp_path)
    text = m.read_text()
    assert "[4:10]" in text
    m.write_text(text.replace("[4:10]", "[5:10]"))  # same size: the old stat hash kept the id
    assert m.stat().st_size == len(text)
    ds2 = Ped2(tmp_path)
    assert ds2.fingerprint() != before
    assert int(ds2.test_labels().per_video["01"].sum()) == \
        int(labels_before.per_video["01"].sum()) - 1


def test_fingerprint_covers_the_ucsd_layout_label_file_too(tmp_path: Path) -> None:
    fakes.write_ped2_ucsd(tmp_path / "UCSDped2", test_lengths=(10, 7),
                          anomalous=[(3, 10), (0, 4)])
    before = Ped2(tmp_path).fingerprint()
    m = tmp_path / "UCSDped2" / "Test" / "UCSDped2.m"
    m.write_text(m.read_text().replace("[1:4]", "[1:3]"))
    assert Ped2(tmp_path).fingerprint() != before


def test_one_changed_frame_byte_changes_the_fingerprint(tmp_path: Path) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    before = Ped2(tmp_path).fingerprint()
    f = tmp_path / "ped2" / "testing" / "frames" / "02" / "003.jpg"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    assert Ped2(tmp_path).fingerprint() != before


def test_same_bytes_elsewhere_give_the_same_fingerprint(tmp_path: Path) -> None:
    fakes.write_ped2_frames(tmp_path / "a" / "ped2", label_files=("m",))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new mtimes, inodes and absolute paths
    _age(tmp_path / "b", 10_000)
    a, b = Ped2(tmp_path / "a").fingerprint(), Ped2(tmp_path / "b").fingerprint()
    assert a == b and len(a) == digest.FINGERPRINT_CHARS
    # parameters and the selection are part of it; where frames are cached is not
    assert Ped2(tmp_path / "a", size=[32, 32]).fingerprint() != a
    assert Ped2(tmp_path / "a", test_videos=["01"]).fingerprint() != a
    assert Ped2(tmp_path / "a", cache_dir=str(tmp_path / "x")).fingerprint() == a


def test_a_deleted_test_video_changes_the_fingerprint(tmp_path: Path) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    before = Ped2(tmp_path).fingerprint()
    shutil.rmtree(tmp_path / "ped2" / "testing" / "frames" / "02")
    assert Ped2(tmp_path).fingerprint() != before


@pytest.mark.parametrize("gz", [False, True])
def test_garbage_idx_pixels_of_the_same_size_change_the_fingerprint(tmp_path: Path, gz: bool
                                                                    ) -> None:
    fakes.write_mnist(tmp_path / "mnist", gz=gz)
    before = MNIST(tmp_path).fingerprint()
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    p = tmp_path / "mnist" / name
    size = p.stat().st_size
    imgs = np.random.default_rng(1).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    fakes.write_idx(p, imgs)
    if not gz:
        assert p.stat().st_size == size  # a stat-based identity could not see this
    assert MNIST(tmp_path).fingerprint() != before


def test_cifar_pickles_are_hashed_by_content(tmp_path: Path) -> None:
    fakes.write_cifar10_batches(tmp_path / "cifar-10-batches-py")
    fakes.write_cifar100(tmp_path / "cifar-100-python")
    c10, c100 = CIFAR10(tmp_path).fingerprint(), CIFAR100(tmp_path).fingerprint()
    for p in (tmp_path / "cifar-10-batches-py" / "test_batch",
              tmp_path / "cifar-100-python" / "test"):
        raw = bytearray(p.read_bytes())
        raw[-100] ^= 0xFF  # one pixel of the last image, same size
        p.write_bytes(bytes(raw))
    assert CIFAR10(tmp_path).fingerprint() != c10
    assert CIFAR100(tmp_path).fingerprint() != c100


def test_digits_fingerprint_includes_the_bundled_data() -> None:
    from occbench.datasets import builtin

    assert builtin._digits_content() != "unknown"
    assert Digits().fingerprint() == Digits().fingerprint()
    assert Digits(test_fraction=0.3).fingerprint() != Digits().fingerprint()


# --------------------------------------------------------------------------------------------
# the digest cache
# --------------------------------------------------------------------------------------------


def test_warm_fingerprint_reads_no_file_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    _age(tmp_path / "ped2")
    n_files = sum(1 for p in (tmp_path / "ped2").rglob("*") if p.is_file())
    count = _Counter(monkeypatch)
    cold = Ped2(tmp_path).fingerprint()
    assert len(count.calls) == n_files
    count.calls.clear()
    assert Ped2(tmp_path).fingerprint() == cold
    assert count.calls == []
    # the cache lives in the user cache dir, never in the (possibly read-only) data root
    assert (tmp_path / "cache" / f"digests-v{digest.SCHEMA}.sqlite").is_file()
    assert not any("digest" in p.name or p.suffix == ".sqlite"
                   for p in (tmp_path / "ped2").rglob("*"))


def test_same_size_rewrite_invalidates_the_cached_digest(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    _age(tmp_path / "ped2")
    before = Ped2(tmp_path).fingerprint()
    f = tmp_path / "ped2" / "testing" / "frames" / "01" / "000.jpg"
    st = f.stat()
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    time.sleep(0.05)  # past the filesystem's timestamp tick, so the ctime moves
    f.write_bytes(bytes(raw))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime restored
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    count = _Counter(monkeypatch)
    after = Ped2(tmp_path).fingerprint()
    assert after != before
    assert count.calls == [f]


def test_recently_modified_files_are_never_trusted_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    _age(tmp_path / "ped2")
    m = _ucsd_m(tmp_path)
    m.write_text(m.read_text())  # modified just now: within the racy window
    Ped2(tmp_path).fingerprint()
    count = _Counter(monkeypatch)
    Ped2(tmp_path).fingerprint()
    assert count.calls == [m]  # hashed again: a second write in the same tick would be invisible


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty-table"])
def test_a_corrupt_cache_is_ignored_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                damage: str) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    _age(tmp_path / "ped2")
    good = Ped2(tmp_path).fingerprint()
    db = tmp_path / "cache" / f"digests-v{digest.SCHEMA}.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 1000)
    elif damage == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2 + 17])
    else:
        with sqlite3.connect(db) as con:
            con.execute("DROP TABLE digests")
            con.execute("CREATE TABLE digests (x)")
    assert Ped2(tmp_path).fingerprint() == good  # no error, same answer
    count = _Counter(monkeypatch)
    assert Ped2(tmp_path).fingerprint() == good
    assert count.calls == []  # rebuilt: warm again


def test_an_unusable_cache_dir_only_costs_time(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("m",))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    good = Ped2(tmp_path).fingerprint()
    monkeypatch.setenv("OCCBENCH_CACHE", str(blocker / "cache"))
    assert Ped2(tmp_path).fingerprint() == good


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCCBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digest.default_cache_dir() == tmp_path / "xdg" / "occbench"


def test_concurrent_processes_share_one_cache(tmp_path: Path) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", train_lengths=(30, 30), test_lengths=(30, 30),
                            label_files=("m",))
    _age(tmp_path / "ped2")
    code = ("import sys; from occbench.datasets.video import Ped2; "
            "print(Ped2(sys.argv[1]).fingerprint())")
    env = {**os.environ, "OCCBENCH_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    fps = {o.strip() for o, _ in outs}
    assert fps == {Ped2(tmp_path).fingerprint()}
    with sqlite3.connect(tmp_path / "cache" / f"digests-v{digest.SCHEMA}.sqlite") as con:
        (n,) = con.execute("SELECT COUNT(*) FROM digests").fetchone()
    assert n == sum(1 for p in (tmp_path / "ped2").rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# real Ped2 (skipped without it)
# --------------------------------------------------------------------------------------------


def _ped2_copy(real: Path, dest: Path) -> Path:
    """A copy of real Ped2 whose frame folders are symlinks and whose label files are copies."""
    src = real / "ped2"
    (dest / "ped2").mkdir(parents=True)
    for name in ("training", "testing"):
        (dest / "ped2" / name).symlink_to(src / name, target_is_directory=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / "ped2" / f.name)
    return dest


@pytest.mark.realdata
def test_real_ped2_label_edit_changes_every_job_id(realdata: Path, tmp_path: Path) -> None:
    if not (realdata / "ped2" / "UCSDped2.m").exists():
        pytest.skip("real Ped2 not present")
    real = Ped2(realdata).fingerprint()
    copy = _ped2_copy(realdata, tmp_path / "copy")
    assert Ped2(copy).fingerprint() == real  # same bytes elsewhere: same identity
    m = copy / "ped2" / "UCSDped2.m"
    text = m.read_text()
    assert "[61:180]" in text
    m.write_text(text.replace("[61:180]", "[16:180]"))  # the edit: 1,648 -> 1,693
    edited = Ped2(copy)
    assert sum(int(v.sum()) for v in edited.test_labels().per_video.values()) == 1693
    assert edited.fingerprint() != real
    # the other label sources were not edited: a spec on them keeps its ids
    assert Ped2(copy, labels="mat").fingerprint() == Ped2(realdata, labels="mat").fingerprint()

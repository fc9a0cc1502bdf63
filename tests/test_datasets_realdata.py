"""Loaders on the real data in ``$OCCBENCH_DATA`` / ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from occbench.datasets.images import MNIST, FashionMNIST
from occbench.datasets.video import Avenue, Ped2, ShanghaiTech, read_label_table

pytestmark = pytest.mark.realdata

PED2_COUNTS = [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
PED2_RANGES = [(61, 180), (95, 180), (1, 146), (31, 180), (1, 129), (1, 159), (46, 180),
               (1, 180), (1, 120), (1, 150), (1, 180), (88, 180)]


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("labels", ["ucsd-m", "mat", "npy"])
def test_ped2_labels_agree(realdata: Path, labels: str) -> None:
    _need(realdata / "ped2")
    ds = Ped2(realdata, labels=labels)
    lab = ds.test_labels()
    assert [len(v) for v in lab.per_video.values()] == PED2_COUNTS
    assert sum(int(v.sum()) for v in lab.per_video.values()) == 1648
    for (a, b), v in zip(PED2_RANGES, lab.per_video.values(), strict=True):
        assert np.flatnonzero(v).tolist() == list(range(a - 1, b))
    rep = ds.check()
    assert rep.ok, rep.errors
    assert rep.facts["test_frames"] == 2010 and rep.facts["train_frames"] == 2550


def test_ped2_load_subset(realdata: Path) -> None:
    _need(realdata / "ped2")
    ds = Ped2(realdata, size=[64, 64], channels=1, train_videos=["01"], test_videos=["09"])
    split = ds.load()
    assert split.test.videos[0].frames.shape == (120, 64, 64, 1)
    assert split.train.videos[0].frames.shape[1:] == (64, 64, 1)
    assert int(ds.test_labels().per_video["09"].sum()) == 120


def test_avenue_partial_official_vs_lntra(realdata: Path) -> None:
    d = _need(realdata / "avenue-partial")
    assert len(list((d / "testing_label_mask").glob("*_label.mat"))) == 21
    lntra = read_label_table(Avenue(realdata, labels="lntra"))
    assert len(lntra) == 21 and sum(int(v.sum()) for v in lntra.values()) == 3867
    # only the short videos' masks here (reading all 21 takes ~20 s: see the slow test)
    sub = {"test_videos": ["08", "21"], "train_videos": ["12"]}
    off = Avenue(realdata, labels="official", **sub).test_labels()
    ln = Avenue(realdata, labels="lntra", **sub).test_labels()
    assert off.source == "avenue:official:testing_label_mask" and "lntra" in ln.source
    assert int(off.per_video["08"].sum()) == 36 and int(ln.per_video["08"].sum()) == 10
    assert len(off.per_video["21"]) == len(ln.per_video["21"]) == 76
    ds = Avenue(realdata, size=[32, 32], **sub)
    split = ds.load()
    assert split.test.video_ids == ["08", "21"]
    assert [len(v) for v in split.test.videos] == [36, 76]
    assert split.test.videos[0].frames.shape[1:] == (32, 32, 3)
    # 15 test videos are missing: an error unless the present ones are named explicitly
    rep = Avenue(realdata, labels="lntra").check()
    assert not rep.ok and any("'01'" in e and 'test_videos=["08", "17", "18", "19", "20", '
                              '"21"]' in e for e in rep.errors), rep.errors
    present = ["08", "17", "18", "19", "20", "21"]
    rep = Avenue(realdata, labels="lntra", test_videos=present).check()
    assert rep.ok, rep.errors
    assert rep.facts["test_videos"] == 6 and any("only 6 of 21" in w for w in rep.warnings)


@pytest.mark.slow
def test_avenue_all_official_masks(realdata: Path) -> None:
    _need(realdata / "avenue-partial")
    off = read_label_table(Avenue(realdata, labels="official"))
    lntra = read_label_table(Avenue(realdata, labels="lntra"))
    assert len(off) == 21
    assert sum(len(v) for v in off.values()) == 15324
    assert sum(int(v.sum()) for v in off.values()) == 3712
    assert len([k for k in off if not np.array_equal(off[k], lntra[k])]) == 15
    assert Avenue(realdata, test_videos=["08", "17", "18", "19", "20", "21"]).check().ok


def test_shanghaitech_labels(realdata: Path) -> None:
    _need(realdata / "shanghaitech-labels")
    table = read_label_table(ShanghaiTech(realdata))
    assert len(table) == 107
    assert sum(len(v) for v in table.values()) == 40791
    assert sum(int(v.sum()) for v in table.values()) == 17326
    z = np.load(realdata / "shanghaitech-labels" / "shanghaitech_frame_labels_per_video.npz")
    assert all(np.array_equal(table[k], z[k]) for k in z.files)


def test_mnist_test_set(realdata: Path) -> None:
    _need(realdata / "mnist-test")
    ds = MNIST(realdata)
    imgs = ds.test_images().images
    assert imgs.shape == (10000, 28, 28, 1) and imgs.dtype == np.uint8
    lab = ds.test_labels("0").per_video[""]
    assert len(lab) == 10000 and int((lab == 0).sum()) == 980  # 980 zeros in the MNIST test set
    rep = ds.check()
    assert not rep.ok and any("train-images" in e for e in rep.errors)


def test_debian_fashion_mnist() -> None:
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    # the system copy, named as a root: $OCCBENCH_DATA (set for the other real-data tests) is
    # an explicit root, which never falls back to /usr/share/datasets
    ds = FashionMNIST("/usr/share/datasets")
    rep = ds.check()
    assert rep.ok, rep.errors
    assert rep.facts["train_images"] == 60000 and rep.facts["test_images"] == 10000
    split = ds.load("boot")
    assert split.train.images.shape == (6000, 28, 28, 1)
    assert int(ds.test_labels("boot").per_video[""].sum()) == 9000

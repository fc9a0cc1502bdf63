"""CIFAR-100 (20 superclasses, one vs rest) on tiny fakes in the official pickle format."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from occbench.datasets import fakes
from occbench.datasets import fetch as F
from occbench.datasets.images import CIFAR100, CIFAR100_COARSE
from occbench.harness.api import (
    DatasetFormatError,
    DatasetNotFoundError,
    LabelAccessError,
    labels_blocked,
    verify_labels_match,
)
from occbench.harness.cli.data import check_dataset


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.delenv("OCCBENCH_DATA", raising=False)
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


def _superclass_of(images: np.ndarray) -> np.ndarray:
    # fakes encode the superclass in the mean brightness: 20 + 10 * coarse
    return np.rint((images.reshape(len(images), -1).mean(1) - 20) / 10).astype(int)


@pytest.mark.parametrize("sub", ["cifar-100-python", "cifar100/cifar-100-python", "cifar100"])
def test_one_vs_rest_over_superclasses(tmp_path: Path, sub: str) -> None:
    info = fakes.write_cifar100(tmp_path / sub, n_train_per_fine=2, n_test_per_fine=1)
    ds = CIFAR100(tmp_path)
    assert ds.classes() == list(CIFAR100_COARSE) and len(ds.classes()) == 20
    split = ds.load("people")  # superclass 14
    assert split.train.images.shape == (10, 32, 32, 3)  # 5 fine classes x 2 images
    assert split.train.images.dtype == np.uint8
    assert (_superclass_of(split.train.images) == 14).all()
    assert split.test.images.shape == (100, 32, 32, 3)
    lab = ds.test_labels("people")
    y = lab.per_video[""]
    np.testing.assert_array_equal(y, (info["test_coarse"] != 14).astype(np.uint8))
    assert int((y == 0).sum()) == 5 and set(np.unique(y)) == {0, 1}
    # labels follow the test images: normal exactly where the image is of superclass 14
    np.testing.assert_array_equal(y == 0, _superclass_of(split.test.images) == 14)
    verify_labels_match(split.test, lab)
    assert lab.source == "cifar100:test(coarse_labels)"


def test_class_by_index_and_unknown(tmp_path: Path) -> None:
    fakes.write_cifar100(tmp_path / "cifar-100-python")
    ds = CIFAR100(tmp_path)
    np.testing.assert_array_equal(ds.load("3").train.images, ds.load("food_containers")
                                  .train.images)
    np.testing.assert_array_equal(ds.test_labels("19").per_video[""],
                                  ds.test_labels("vehicles_2").per_video[""])
    with pytest.raises(ValueError, match="unknown normal class"):
        ds.load("apple")  # a fine class is not a normal class
    with pytest.raises(ValueError, match="one-vs-rest"):
        ds.load(None)


def test_rows_are_chw_planes(tmp_path: Path) -> None:
    # the file stores R, G, B 32x32 planes per row; the loader must give (32, 32, 3) RGB
    d = tmp_path / "cifar-100-python"
    fakes.write_cifar100(d)
    with open(d / "train", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    raw[b"data"][:, :1024] = 200  # red plane
    raw[b"data"][:, 1024:2048] = 7  # green plane
    with open(d / "train", "wb") as fh:
        pickle.dump(raw, fh)
    imgs = CIFAR100(tmp_path).auxiliary_images()
    assert (imgs[..., 0] == 200).all() and (imgs[..., 1] == 7).all()
    assert not (imgs[..., 2] == 7).all()


def test_auxiliary_images_are_all_training_images(tmp_path: Path) -> None:
    info = fakes.write_cifar100(tmp_path / "cifar-100-python", n_train_per_fine=2)
    ds = CIFAR100(tmp_path)
    aux = ds.auxiliary_images()
    assert aux.shape == (200, 32, 32, 3) and aux.dtype == np.uint8
    # every superclass, in the train file's order, and no test image among them
    np.testing.assert_array_equal(_superclass_of(aux), info["train_coarse"])
    with open(tmp_path / "cifar-100-python" / "test", "rb") as fh:
        test_rows = pickle.load(fh, encoding="bytes")[b"data"]
    test_set = {r.tobytes() for r in test_rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)}
    assert not any(a.tobytes() in test_set for a in aux)
    # the union of the one-vs-rest training sets is exactly this pool
    parts = np.concatenate([ds.load(c).train.images for c in ds.classes()])
    assert sorted(a.tobytes() for a in parts) == sorted(a.tobytes() for a in aux)
    with labels_blocked():  # a method may read it while labels are blocked
        assert len(ds.auxiliary_images()) == 200


def test_label_guard(tmp_path: Path) -> None:
    fakes.write_cifar100(tmp_path / "cifar-100-python")
    ds = CIFAR100(tmp_path)
    with labels_blocked():
        assert len(ds.load("fish").test) == 100  # loading still works inside a method
        with pytest.raises(LabelAccessError, match="cifar100"):
            ds.test_labels("fish")
    assert len(ds.test_labels("fish").per_video[""]) == 100  # restored afterwards


def test_not_found_says_where_and_how(tmp_path: Path) -> None:
    ds = CIFAR100(tmp_path)
    assert ds.classes() == list(CIFAR100_COARSE)  # names are known without the files
    with pytest.raises(DatasetNotFoundError) as exc:
        ds.load("fish")
    msg = str(exc.value)
    assert str(tmp_path / "cifar-100-python") in msg
    assert "occbench data fetch cifar100" in msg and "cifar-100-python.tar.gz" in msg
    rep = check_dataset("cifar100", tmp_path)  # through the registry, as `occbench data check`
    assert not rep.ok and "occbench data fetch cifar100" in rep.errors[0]
    # one file missing: the message names it
    fakes.write_cifar100(tmp_path / "cifar-100-python")
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DatasetNotFoundError, match="'test' is missing"):
        CIFAR100(tmp_path).load("fish")


def test_corrupt_and_inconsistent_files_name_the_file(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    fakes.write_cifar100(d)
    ds = CIFAR100(tmp_path)
    assert ds.check().ok
    train = d / "train"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])  # truncated download
    with pytest.raises(DatasetFormatError, match=r"cifar-100-python/train.*truncated"):
        ds.load("fish")
    rep = ds.check()
    assert not rep.ok and any(str(train) in e for e in rep.errors)
    fakes.write_cifar100(d)
    with open(train, "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    raw[b"coarse_labels"] = raw[b"coarse_labels"][:-3]
    with open(train, "wb") as fh:
        pickle.dump(raw, fh)
    with pytest.raises(DatasetFormatError, match=r"train: 100 images but 97 coarse_labels"):
        ds.load("fish")
    (d / "meta").write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match=r"cifar-100-python/meta"):
        ds.classes()


def test_check_report(tmp_path: Path) -> None:
    fakes.write_cifar100(tmp_path / "cifar-100-python", meta=False)
    rep = CIFAR100(tmp_path).check()
    assert rep.ok, rep.errors
    assert rep.facts["train_images"] == 100 and rep.facts["test_images"] == 100
    # tiny fakes: counts and MD5s differ from the official files (warnings, not errors)
    assert any("official file has 50000" in w for w in rep.warnings)
    assert any("MD5 differs" in w for w in rep.warnings)
    assert any("meta is missing" in w for w in rep.warnings)


def test_fingerprint_portable_and_sensitive(tmp_path: Path) -> None:
    fakes.write_cifar100(tmp_path / "a" / "cifar-100-python")
    fp = CIFAR100(tmp_path / "a").fingerprint()
    assert fp == CIFAR100(tmp_path / "a").fingerprint()
    shutil.copytree(tmp_path / "a" / "cifar-100-python", tmp_path / "b" / "cifar-100-python")
    p = tmp_path / "b" / "cifar-100-python" / "test"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert CIFAR100(tmp_path / "b").fingerprint() == fp
    fakes.write_cifar100(tmp_path / "c" / "cifar-100-python", n_test_per_fine=2)
    assert CIFAR100(tmp_path / "c").fingerprint() != fp


def test_fetch_recipe_extracts_where_the_loader_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub, (res,) = F.FETCHABLE["cifar100"]
    assert res.md5 == "eb9058c3a382ffc7106e4002c42a8d85" and res.extract
    assert res.urls[0] == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    # a tarball already in the data root with the expected MD5 is used as is: nothing downloads
    fakes.write_cifar100(tmp_path / "src" / "cifar-100-python")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    root = tmp_path / "root"
    root.mkdir()
    (root / sub / res.filename).write_bytes(buf.getvalue())
    fake = dataclasses.replace(res, md5=F._digest(root / sub / res.filename, "md5"))
    monkeypatch.setitem(F.FETCHABLE, "cifar100", (sub, (fake,)))

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("the test tried to download")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    F.fetch("cifar100", root, log=lambda m: None)
    assert CIFAR100(root).load("trees").train.images.shape == (5, 32, 32, 3)

"""Image datasets on tiny fakes in the official formats (IDX, pickle batches, folders, GTSRB)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from occbench.datasets import fakes
from occbench.datasets import formats as fmt
from occbench.datasets.images import CIFAR10, MNIST, FashionMNIST, GTSRBStop
from occbench.harness.api import DatasetFormatError, DatasetNotFoundError, verify_labels_match


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.delenv("OCCBENCH_DATA", raising=False)
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


# -- IDX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_idx_roundtrip(tmp_path: Path, name: str) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    back = fmt.read_idx(fakes.write_idx(tmp_path / name, a))
    assert back.shape == (2, 3, 4) and (back == a).all()


def test_idx_truncated_and_bad_magic_name_the_file(tmp_path: Path) -> None:
    p = fakes.write_idx(tmp_path / "t-idx3-ubyte", np.zeros((4, 5, 5), np.uint8))
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DatasetFormatError, match=r"t-idx3-ubyte.*truncated"):
        fmt.read_idx(p)
    q = tmp_path / "bad.gz"
    with gzip.open(q, "wb") as fh:
        fh.write(b"\x12\x34\x56\x78abcd")
    with pytest.raises(DatasetFormatError, match=r"bad.gz.*magic"):
        fmt.read_idx(q)
    r = tmp_path / "notgz.gz"
    r.write_bytes(b"plain text")
    with pytest.raises(DatasetFormatError, match=r"notgz.gz"):
        fmt.read_idx(r)


# -- MNIST / Fashion-MNIST ---------------------------------------------------------------------


@pytest.mark.parametrize(("sub", "gz"), [("mnist", True), ("MNIST/raw", False)])
def test_mnist_one_vs_rest(tmp_path: Path, sub: str, gz: bool) -> None:
    info = fakes.write_mnist(tmp_path / sub, n_train_per_class=4, n_test_per_class=3, gz=gz)
    ds = MNIST(tmp_path)
    assert ds.classes() == [str(i) for i in range(10)]
    split = ds.load("3")
    assert split.train.images.shape == (4, 28, 28, 1) and split.train.images.dtype == np.uint8
    assert split.test.images.shape == (30, 28, 28, 1)
    lab = ds.test_labels("3")
    np.testing.assert_array_equal(lab.per_video[""], (info["t10k_labels"] != 3).astype(np.uint8))
    assert lab.source.startswith("mnist:t10k-labels")
    verify_labels_match(split.test, lab)
    # the normal class images really are class 3: fakes encode the class in the brightness
    assert abs(float(split.train.images.mean()) - (3 * 20 + 30)) < 5
    rep = ds.check()
    assert rep.ok, rep.errors
    assert rep.facts["train_images"] == 40 and rep.facts["test_images"] == 30


def test_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"t10k-images-idx3-ubyte.gz"):
        MNIST(tmp_path).load("1")
    fakes.write_mnist(tmp_path / "mnist", train=False)
    ds = MNIST(tmp_path)
    assert ds.test_images().images.shape[0] == 30  # a test-only copy still serves the test set
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        ds.load("1")
    rep = ds.check()
    assert not rep.ok and any("train-images" in e for e in rep.errors)
    with pytest.raises(ValueError, match="unknown normal class"):
        ds.test_labels("eleven")


def test_mnist_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    fakes.write_mnist(tmp_path / "mnist")
    fakes.write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    rep = MNIST(tmp_path).check()
    assert any("50 images but 7 labels" in e for e in rep.errors)
    with pytest.raises(DatasetFormatError, match="50 images but 7 labels"):
        MNIST(tmp_path).load("0")


def test_fingerprint_changes_with_files_and_params(tmp_path: Path) -> None:
    fakes.write_mnist(tmp_path / "mnist")
    a = MNIST(tmp_path).fingerprint()
    assert a == MNIST(tmp_path).fingerprint()
    # portable: a copy elsewhere (new mtimes, new path) keeps the job ids
    import shutil

    shutil.copytree(tmp_path / "mnist", tmp_path / "elsewhere" / "mnist")
    p = tmp_path / "elsewhere" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert MNIST(tmp_path / "elsewhere").fingerprint() == a
    # different files (other sizes) change it
    fakes.write_mnist(tmp_path / "other" / "mnist", n_test_per_class=4)
    assert MNIST(tmp_path / "other").fingerprint() != a


def test_fashion_mnist_found_in_system_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysdir = tmp_path / "usr-share-datasets" / "fashion-mnist"
    fakes.write_mnist(sysdir, n_train_per_class=2, n_test_per_class=1)
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(sysdir),))
    ds = FashionMNIST()  # no root at all
    assert ds.classes()[0] == "tshirt" and ds.classes()[-1] == "boot"
    assert ds.load("bag").train.images.shape[0] == 2
    assert ds.load("8").train.images.shape[0] == 2  # index alias
    assert int(ds.test_labels("bag").per_video[""].sum()) == 9


# -- CIFAR-10 ----------------------------------------------------------------------------------


def test_cifar10_batches(tmp_path: Path) -> None:
    info = fakes.write_cifar10_batches(tmp_path / "cifar-10-batches-py")
    ds = CIFAR10(tmp_path)
    assert ds.classes()[3] == "cat"
    split = ds.load("cat")
    assert split.train.images.shape == (5, 32, 32, 3)
    assert split.test.images.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(ds.test_labels("cat").per_video[""],
                                  (info["test_labels"] != 3).astype(np.uint8))
    assert ds.check().ok
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError, match="test_batch"):
        ds.load("cat")
    assert not ds.check().ok


def test_cifar10_image_folders_hide_class_order(tmp_path: Path) -> None:
    classes = ["airplane", "bird", "cat"]
    fakes.write_image_folders(tmp_path / "cifar10", classes, n_train=3, n_test=4)
    ds = CIFAR10(tmp_path)
    assert ds.classes() == classes
    split, lab = ds.load("bird"), ds.test_labels("bird").per_video[""]
    assert split.train.images.shape == (3, 32, 32, 3)
    assert len(lab) == 12 and lab.sum() == 8
    # labels follow the shuffled images: recover each image's class from its brightness
    cls = np.rint((split.test.images.reshape(12, -1).mean(1) - 30) / 20).astype(int)
    np.testing.assert_array_equal(lab, (cls != 1).astype(np.uint8))
    assert not (np.diff(cls) >= 0).all()  # not sorted by class


# -- GTSRB -------------------------------------------------------------------------------------


def test_gtsrb_stop_boundary_attack(tmp_path: Path) -> None:
    fakes.write_gtsrb(tmp_path / "GTSRB", classes=(1, 14, 25), n_train=6, n_test=4)
    ds = GTSRBStop(tmp_path, n_adversarial=3, attack_steps=100)
    assert ds.classes() == ["stop"]
    rep = ds.check()
    assert rep.ok, rep.errors
    assert rep.facts["test_stop"] == 4
    split, labels = ds.load("stop"), ds.test_labels("stop")
    assert split.train.images.shape == (6, 32, 32, 3)
    lab = labels.per_video[""]
    assert split.test.images.shape == (7, 32, 32, 3) and int(lab.sum()) == 3
    assert "boundary-attack" in labels.source and "nearest-class-mean" in labels.source
    # adversarial images fool the surrogate but stay closer to a stop sign than random noise
    clf = ds._surrogate()
    adv = split.test.images[lab == 1].reshape(3, -1).astype(np.float64)
    assert (clf.predict(adv) != 14).all()
    clean = split.test.images[lab == 0].reshape(4, -1).astype(np.float64)
    assert (clf.predict(clean) == 14).all()
    dist = np.linalg.norm(adv[:, None] - clean[None], axis=2).min(1)
    noise = np.random.default_rng(0).uniform(0, 255, adv.shape)
    assert (dist < np.linalg.norm(noise[:, None] - clean[None], axis=2).min(1)).all()
    # deterministic
    np.testing.assert_array_equal(GTSRBStop(tmp_path, n_adversarial=3, attack_steps=100)
                                  .load("stop").test.images, split.test.images)


def test_gtsrb_other_classes_and_errors(tmp_path: Path) -> None:
    info = fakes.write_gtsrb(tmp_path / "GTSRB", classes=(1, 14), n_train=3, n_test=3)
    ds = GTSRBStop(tmp_path, anomalies="other-classes")
    lab = ds.test_labels("stop")
    assert len(ds.load("stop").test) == 6 and int(lab.per_video[""].sum()) == 3
    assert sorted(lab.per_video[""]) == sorted((info["test_classes"] != 14).astype(np.uint8))
    with pytest.raises(ValueError, match="unknown parameter"):
        GTSRBStop(tmp_path, sizee=3).load("stop")
    csv = tmp_path / "GTSRB" / "GT-final_test.csv"
    csv.write_text("\n".join(line.rsplit(";", 1)[0] for line in csv.read_text().splitlines()))
    with pytest.raises(DatasetFormatError, match="no ClassId"):
        ds.load("stop")
    with pytest.raises(DatasetNotFoundError, match="Final_Training"):
        GTSRBStop(tmp_path / "nothing").load("stop")

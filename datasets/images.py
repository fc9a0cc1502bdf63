"""Image one-vs-rest datasets: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
``gtsrb-stop``.

Protocol (as in the papers): train on the normal class's training images only; test on the whole
official test set, every other class being anomalous (label 1). ``gtsrb-stop`` follows Deep SVDD
instead: stop-sign test images are normal and adversarial examples are the anomalies.

Class names (``classes()``; a job may also give the class index as a string, e.g. ``"3"``):

* mnist: ``"0"`` .. ``"9"``
* fashion-mnist: ``tshirt trouser pullover dress coat sandal shirt sneaker bag boot``
  (short forms of the official T-shirt/top, Trouser, ..., Ankle boot; no ``/`` so that they can
  be used in file names)
* cifar10: ``airplane automobile bird cat deer dog frog horse ship truck``
* cifar100: the 20 coarse superclasses, ``aquatic_mammals fish flowers ... vehicles_1
  vehicles_2`` (``coarse_label_names`` of the official ``meta`` file)
* gtsrb-stop: ``"stop"`` only (GTSRB class 14)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from occbench.datasets import formats as fmt
from occbench.datasets.digest import DigestCache, content_fingerprint, relative_names
from occbench.harness.api import (
    CheckReport,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetSplit,
    ImageData,
    Labels,
)

DATA_ROOT_ENV = "OCCBENCH_DATA_ROOT"


def _content(ds: Dataset, files: Sequence[Path], folder: Path) -> str:
    """Content fingerprint of ``files`` (named relative to ``folder``) plus name/version/params."""
    extra = {"dataset": ds.name, "version": ds.version, "params": ds.params}
    return content_fingerprint(relative_names(files, folder), extra, DigestCache())


def _resolve_class(name: str, normal_class: str | None, classes: Sequence[str]) -> int:
    if normal_class is None:
        raise ValueError(f"{name} is one-vs-rest: give normal_class, one of {list(classes)}")
    nc = str(normal_class)
    if nc in classes:
        return list(classes).index(nc)
    if nc.isdigit() and int(nc) < len(classes):
        return int(nc)
    raise ValueError(f"{name}: unknown normal class {nc!r}; known: {list(classes)}")


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int) -> np.ndarray:
    # keyed by mtime so a replaced file is re-read; ten one-vs-rest jobs in a process share it
    a = fmt.read_idx(Path(path))
    a.flags.writeable = False
    return a


def _read_idx(path: Path) -> np.ndarray:
    return _read_idx_cached(str(path), path.stat().st_mtime_ns)


class ImageDataset(Dataset):
    """Shared locating logic for the image datasets."""

    modality = "image"
    folder_names: ClassVar[tuple[str, ...]] = ()
    system_dirs: ClassVar[tuple[str, ...]] = ()
    help_text: ClassVar[str] = ""

    def _roots(self) -> list[Path]:
        """Where to look: the data root (given, or from the environment) and its usual
        sub-folders; system folders (Debian's ``/usr/share/datasets``) only when there is no
        data root at all, so an explicit root is never silently replaced by another copy."""
        root = self.root if self.root is not None else fmt.env_data_root()
        if root is not None:
            return [root, *(root / n for n in self.folder_names)]
        return [Path(p) for p in self.system_dirs]

    def _not_found(self, what: str) -> DatasetNotFoundError:
        tried = ", ".join(str(c) for c in self._roots()) or "(no data root given)"
        root = self.root if self.root is not None else fmt.env_data_root()
        hint = ""
        if root is not None and any(Path(p).is_dir() for p in self.system_dirs):
            hint = (f"\nA system copy exists in {', '.join(self.system_dirs)} but is used only "
                    f"without a data root: link it into the root (ln -s {self.system_dirs[0]} "
                    f"{root}/{self.folder_names[0] if self.folder_names else self.name}) or drop "
                    "--data-root.")
        return DatasetNotFoundError(f"{self.name}: {what} (looked in: {tried}).\n"
                                    f"{self.help_text}{hint}")


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


class IDXDataset(ImageDataset):
    """MNIST-style IDX files, gzipped or raw (``train-images-idx3-ubyte[.gz]`` etc.)."""

    class_names: ClassVar[tuple[str, ...]] = ()
    official_md5: ClassVar[dict[str, str]] = {}
    counts: ClassVar[tuple[int, int]] = (60000, 10000)

    def classes(self) -> list[str]:
        return list(self.class_names)

    def folder(self) -> Path:
        """First candidate folder holding any of the four IDX files."""
        for d in self._roots():
            if d.is_dir() and any(fmt.find_idx(d, s) for s in _IDX_STEMS.values()):
                return d
        raise self._not_found("no IDX files found")

    def files(self) -> dict[str, Path | None]:
        d = self.folder()
        return {k: fmt.find_idx(d, s) for k, s in _IDX_STEMS.items()}

    def _file(self, key: str) -> Path:
        p = self.files()[key]
        if p is None:
            raise self._not_found(f"{_IDX_STEMS[key]}[.gz] is missing in {self.folder()}")
        return p

    def _images(self, key: str) -> np.ndarray:
        a = _read_idx(self._file(key))
        if a.ndim != 3 or a.dtype != np.uint8:
            raise DatasetFormatError(f"{self._file(key)}: expected uint8 (N, H, W), got {a.shape}")
        return a[..., None]

    def _labels(self, key: str) -> np.ndarray:
        a = _read_idx(self._file(key))
        if a.ndim != 1:
            raise DatasetFormatError(f"{self._file(key)}: expected a 1-d label file, got {a.shape}")
        return a

    def test_images(self) -> ImageData:
        """The whole test set, ``(N, 28, 28, 1)`` uint8, official order."""
        return ImageData(self._images("test_images"))

    def fingerprint(self) -> str:
        """Hash of the bytes of the four IDX files as stored (gzipped or not) and the params."""
        paths = [p for p in self.files().values() if p is not None]
        return _content(self, paths, self.folder())

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        """Training images of the normal class ``(n, 28, 28, 1)``; all test images."""
        k = _resolve_class(self.name, normal_class, self.class_names)
        imgs, labs = self._images("train_images"), self._labels("train_labels")
        if len(imgs) != len(labs):
            raise DatasetFormatError(
                f"{self._file('train_images')}: {len(imgs)} images but {len(labs)} labels in "
                f"{self._file('train_labels')}"
            )
        return DatasetSplit(train=ImageData(np.ascontiguousarray(imgs[labs == k])),
                            test=self.test_images())

    def test_labels(self, normal_class: str | None = None) -> Labels:
        """``(N,)`` 0/1, 1 = not the normal class."""
        k = _resolve_class(self.name, normal_class, self.class_names)
        p = self._file("test_labels")
        return Labels({"": (self._labels("test_labels") != k).astype(np.uint8)},
                      source=f"{self.name}:{p.name}")

    def check(self) -> CheckReport:
        """Files present, parseable, counts and label range, official MD5 (warning if different)."""
        rep = CheckReport(self.name)
        try:
            files = self.files()
            rep.facts["folder"] = str(self.folder())
        except DatasetNotFoundError as exc:
            rep.errors.append(str(exc))
            return rep
        for key, p in files.items():
            if p is None:
                rep.errors.append(
                    f"{_IDX_STEMS[key]}[.gz] is missing in {rep.facts['folder']}; "
                    f"{self.help_text.splitlines()[-1]}"
                )
                continue
            try:
                a = _read_idx(p)
            except (DatasetFormatError, DatasetNotFoundError) as exc:
                rep.errors.append(str(exc))
                continue
            rep.facts[key] = len(a)
            expected = self.counts[0] if key.startswith("train") else self.counts[1]
            if len(a) != expected:
                rep.warnings.append(f"{p}: {len(a)} items, the official file has {expected}")
            if key.endswith("labels") and len(a) and int(a.max()) >= len(self.class_names):
                rep.errors.append(f"{p}: label {int(a.max())} out of range 0..9")
            if p.name in self.official_md5:
                if fmt.file_md5(p) != self.official_md5[p.name]:
                    rep.warnings.append(
                        f"{p}: MD5 differs from the official download (e.g. recompressed by a "
                        "package); content was checked structurally"
                    )
                else:
                    rep.facts.setdefault("md5_verified", []).append(p.name)
        for split in ("train", "test"):
            ni, nl = rep.facts.get(f"{split}_images"), rep.facts.get(f"{split}_labels")
            if ni is not None and nl is not None and ni != nl:
                rep.errors.append(f"{split}: {ni} images but {nl} labels")
        return rep


class MNIST(IDXDataset):
    """MNIST handwritten digits, 28x28 grey; one-vs-rest over the ten digits."""

    name = "mnist"
    version = "1"
    description = "MNIST digits, one-vs-rest (official IDX files)"
    class_names = tuple(str(i) for i in range(10))
    folder_names = ("mnist", "MNIST", "MNIST/raw", "mnist-test")
    official_md5: ClassVar[dict[str, str]] = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    help_text = (
        "MNIST: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or unzipped) in "
        "<data root>/mnist (or MNIST/raw).\n"
        "Get them with `occbench data fetch mnist` or from http://yann.lecun.com/exdb/mnist/."
    )


class FashionMNIST(IDXDataset):
    """Fashion-MNIST (Zalando), 28x28 grey; found in Debian's ``/usr/share/datasets``."""

    name = "fashion-mnist"
    version = "1"
    description = "Fashion-MNIST, one-vs-rest (official IDX files)"
    class_names = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot")
    folder_names = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    official_md5: ClassVar[dict[str, str]] = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    help_text = (
        "Fashion-MNIST: the four IDX files in <data root>/fashion-mnist, or install Debian's "
        "package (apt-get install dataset-fashion-mnist → /usr/share/datasets/fashion-mnist).\n"
        "Get them with `occbench data fetch fashion-mnist` or from "
        "https://github.com/zalandoresearch/fashion-mnist."
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


class CIFAR10(ImageDataset):
    """CIFAR-10, 32x32 RGB: python pickle batches or ``train|test/<class>/*.png`` folders.

    With the folder layout the test images are put in a fixed pseudo-random order (seed 0), so
    the order does not give away the class; :meth:`test_labels` uses the same order.
    """

    name = "cifar10"
    version = "1"
    description = "CIFAR-10, one-vs-rest (python batches or image folders)"
    folder_names = ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", "CIFAR10",
                    "cifar-10")
    help_text = (
        "CIFAR-10 layouts under <data root>: cifar-10-batches-py/{data_batch_1..5,test_batch,"
        "batches.meta} (the python version), or cifar10/{train,test}/<class>/*.png|jpg.\n"
        "Get it with `occbench data fetch cifar10` or from "
        "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)."
    )

    def _layout(self) -> tuple[str, Path]:
        for d in self._roots():
            if (d / "test_batch").exists() or (d / "data_batch_1").exists():
                return "batches", d
            if (d / "train").is_dir() and (d / "test").is_dir():
                return "folders", d
        raise self._not_found("no CIFAR-10 batches or train/test folders found")

    def classes(self) -> list[str]:
        try:
            kind, d = self._layout()
        except DatasetNotFoundError:
            return list(CIFAR10_CLASSES)
        if kind == "folders":
            return sorted(p.name for p in (d / "train").iterdir() if p.is_dir())
        meta = d / "batches.meta"
        return fmt.read_cifar_meta(meta) if meta.exists() else list(CIFAR10_CLASSES)

    def _source_files(self) -> list[Path]:
        kind, d = self._layout()
        if kind == "batches":
            return [d / n for n in [*CIFAR10_MD5, "batches.meta"] if (d / n).exists()]
        return [p for split in ("train", "test") for c in sorted((d / split).iterdir())
                if c.is_dir() for p in fmt.list_images(c)]

    def fingerprint(self) -> str:
        """Hash of the bytes of every batch file (or every image of the folders) and params."""
        return _content(self, self._source_files(), self._layout()[1])

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        kind, d = self._layout()
        if kind == "batches":
            names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            missing = [n for n in names if not (d / n).exists()]
            if missing:
                raise self._not_found(f"CIFAR-10 batches {missing} missing in {d}")
            parts = [fmt.read_cifar_batch(d / n) for n in names]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        classes = self.classes()
        files: list[Path] = []
        labels: list[int] = []
        for k, c in enumerate(classes):
            fs = fmt.list_images(d / split / c) if (d / split / c).is_dir() else []
            files += fs
            labels += [k] * len(fs)
        if not files:
            raise self._not_found(f"no images in {d / split}/<class>/")
        imgs, lab = fmt.read_image_files(files, None, 3), np.asarray(labels, dtype=np.int64)
        if split == "test":  # hide the class-sorted order from the method
            perm = np.random.default_rng(0).permutation(len(files))
            imgs, lab = imgs[perm], lab[perm]
        return imgs, lab

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        """Training images of the normal class ``(n, 32, 32, 3)``; all test images."""
        k = _resolve_class(self.name, normal_class, self.classes())
        x, y = self._split("train")
        xt, _ = self._split("test")
        return DatasetSplit(train=ImageData(np.ascontiguousarray(x[y == k])), test=ImageData(xt))

    def test_labels(self, normal_class: str | None = None) -> Labels:
        """``(N,)`` 0/1, 1 = not the normal class."""
        k = _resolve_class(self.name, normal_class, self.classes())
        _, y = self._split("test")
        kind, _d = self._layout()
        return Labels({"": (y != k).astype(np.uint8)},
                      source=f"cifar10:{'test_batch' if kind == 'batches' else 'test/<class>'}")

    def check(self) -> CheckReport:
        rep = CheckReport(self.name)
        try:
            kind, d = self._layout()
            rep.facts.update(layout=kind, folder=str(d))
            for split in ("train", "test"):
                x, y = self._split(split)
                rep.facts[f"{split}_images"] = len(x)
                counts = np.bincount(y, minlength=len(self.classes()))
                if (counts == 0).any():
                    rep.errors.append(f"{split}: classes without images: "
                                      f"{[self.classes()[i] for i in np.flatnonzero(counts == 0)]}")
            if kind == "batches":
                for n, md5 in CIFAR10_MD5.items():
                    if (d / n).exists() and fmt.file_md5(d / n) != md5:
                        rep.warnings.append(f"{d / n}: MD5 differs from the official batch")
            if len(self.classes()) != 10:
                rep.warnings.append(f"{len(self.classes())} classes, CIFAR-10 has 10")
        except (DatasetNotFoundError, DatasetFormatError, ValueError) as exc:
            rep.errors.append(str(exc))
        return rep


# --------------------------------------------------------------------------------------------
# CIFAR-100 (20 coarse superclasses)
# --------------------------------------------------------------------------------------------

#: ``coarse_label_names`` of the official ``meta`` file, in label order (used without it)
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
#: MD5 of the files in the official cifar-100-python.tar.gz (as torchvision lists them)
CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
CIFAR100_COUNTS = {"train": 50000, "test": 10000}


@functools.lru_cache(maxsize=4)
def _read_cifar100_cached(path: str, mtime_ns: int, size: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # keyed by mtime and size so a replaced file is re-read; the 20 one-vs-rest jobs of a worker
    # (and the intruder pool of lntra-patch) then unpickle the 150 MB train file once
    out = fmt.read_cifar100(Path(path))
    for a in out:
        a.flags.writeable = False
    return out


class CIFAR100(ImageDataset):
    """CIFAR-100, 32x32 RGB, one-vs-rest over the 20 coarse superclasses.

    The standard anomaly-detection protocol of GEOM (Golan & El-Yaniv 2018), CSI and Deep SAD:
    the normal class is one superclass; training = its 2,500 training images; test = all 10,000
    test images, label 1 = any other superclass. Reads the official python pickles
    ``cifar-100-python/{train,test,meta}``. :meth:`auxiliary_images` gives all 50,000 training
    images (every class; e.g. LNTRA's intruder patches).
    """

    name = "cifar100"
    version = "1"
    description = "CIFAR-100, one-vs-rest over the 20 superclasses (python pickles)"
    folder_names = ("cifar-100-python", "cifar100/cifar-100-python", "cifar100", "CIFAR100",
                    "cifar-100")
    help_text = (
        "CIFAR-100 layout under <data root>: cifar-100-python/{train,test,meta} (the python "
        "version, as extracted from cifar-100-python.tar.gz).\n"
        "Get it with `occbench data fetch cifar100` or from "
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz."
    )

    def folder(self) -> Path:
        """First candidate folder holding any of ``train``, ``test``, ``meta`` (as files)."""
        for d in self._roots():
            if any((d / n).is_file() for n in CIFAR100_MD5):
                return d
        raise self._not_found("no cifar-100-python/{train,test,meta} found")

    def _file(self, name: str) -> Path:
        d = self.folder()
        if not (d / name).is_file():
            raise self._not_found(f"CIFAR-100 file {name!r} is missing in {d}")
        return d / name

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images (N, 32, 32, 3), coarse (N,), fine (N,))``, read-only (shared cache)."""
        p = self._file(split)
        st = p.stat()
        return _read_cifar100_cached(str(p), st.st_mtime_ns, st.st_size)

    def classes(self) -> list[str]:
        """The 20 superclass names (``coarse_label_names`` of ``meta``, else the official ones)."""
        try:
            d = self.folder()
        except DatasetNotFoundError:
            return list(CIFAR100_COARSE)
        if not (d / "meta").is_file():
            return list(CIFAR100_COARSE)
        coarse, _ = fmt.read_cifar100_meta(d / "meta")
        if len(coarse) != len(CIFAR100_COARSE):
            raise DatasetFormatError(
                f"{d / 'meta'}: {len(coarse)} coarse_label_names, CIFAR-100 has 20 superclasses; "
                "extract cifar-100-python.tar.gz again"
            )
        return coarse

    def fingerprint(self) -> str:
        """Hash of the bytes of ``train``, ``test`` and ``meta`` and the parameters."""
        d = self.folder()
        return _content(self, [d / n for n in CIFAR100_MD5 if (d / n).is_file()], d)

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        """Training images of the normal superclass ``(n, 32, 32, 3)``; all test images.

        The test images are the official order, read-only (shared with other jobs).
        """
        k = _resolve_class(self.name, normal_class, self.classes())
        x, coarse, _ = self._read("train")
        xt, _, _ = self._read("test")
        return DatasetSplit(train=ImageData(x[coarse == k]), test=ImageData(xt))

    def test_labels(self, normal_class: str | None = None) -> Labels:
        """``(N,)`` 0/1 in the official test order, 1 = another superclass."""
        k = _resolve_class(self.name, normal_class, self.classes())
        _, coarse, _ = self._read("test")
        return Labels({"": (coarse != k).astype(np.uint8)}, source="cifar100:test(coarse_labels)")

    def auxiliary_images(self) -> np.ndarray:
        """All training images of every class, ``(50000, 32, 32, 3)`` uint8, read-only.

        Never test data: this is the pool a method may draw from (LNTRA's intruder patches).
        """
        return self._read("train")[0]

    def check(self) -> CheckReport:
        """Files parse, counts (50,000/10,000), every superclass present, fine→coarse mapping
        consistent, official MD5s (a difference is a warning)."""
        rep = CheckReport(self.name)
        try:
            d = self.folder()
            rep.facts["folder"] = str(d)
            rep.facts["classes"] = len(self.classes())
            if not (d / "meta").is_file():
                rep.warnings.append(f"{d / 'meta'} is missing; using the official superclass "
                                    "names")
        except (DatasetNotFoundError, DatasetFormatError) as exc:
            rep.errors.append(str(exc))
            return rep
        pairs = []
        for split in ("train", "test"):
            try:
                _, coarse, fine = self._read(split)
            except (DatasetNotFoundError, DatasetFormatError) as exc:
                rep.errors.append(str(exc))
                continue
            rep.facts[f"{split}_images"] = len(coarse)
            if len(coarse) != CIFAR100_COUNTS[split]:
                rep.warnings.append(f"{d / split}: {len(coarse)} images, the official file has "
                                    f"{CIFAR100_COUNTS[split]}")
            counts = np.bincount(coarse, minlength=len(CIFAR100_COARSE))
            if (counts == 0).any():
                rep.errors.append(f"{d / split}: superclasses without images: "
                                  f"{np.flatnonzero(counts == 0).tolist()}")
            pairs.append(np.unique(np.stack([fine, coarse], axis=1), axis=0))
        if pairs:
            p = np.unique(np.concatenate(pairs), axis=0)
            if len(np.unique(p[:, 0])) != len(p):
                rep.errors.append(f"{d}: some fine classes are labelled with several "
                                  "superclasses; the coarse_labels are corrupt")
        for n, md5 in CIFAR100_MD5.items():
            if (d / n).is_file():
                if fmt.file_md5(d / n) != md5:
                    rep.warnings.append(f"{d / n}: MD5 differs from the official file")
                else:
                    rep.facts.setdefault("md5_verified", []).append(n)
        return rep


# --------------------------------------------------------------------------------------------
# GTSRB stop signs with boundary-attack anomalies
# --------------------------------------------------------------------------------------------

GTSRB_STOP = 14


def _gtsrb_crop(path: Path, row: dict[str, str], size: int) -> np.ndarray:
    img = fmt.read_image(path, None, 3)
    x1, y1, x2, y2 = (int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
    crop = img[y1: y2 + 1, x1: x2 + 1] if (y2 > y1 and x2 > x1) else img
    return fmt.convert_frame(crop, (size, size), 3, bgr=False)


class NearestMeanClassifier:
    """Surrogate classifier for the attack: nearest class mean in pixel space (float64)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(axis=0) for c in self.classes])
        self._sq = (self.means ** 2).sum(axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        # argmin ||x - m||^2 = argmin (||m||^2 - 2 x.m)
        return self.classes[np.argmin(self._sq[None, :] - 2.0 * x @ self.means.T, axis=1)]


def boundary_attack(
    x0: np.ndarray, is_adversarial: Any, rng: np.random.Generator, steps: int = 1000,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Decision-based Boundary Attack (Brendel et al., ICLR 2018), vectorised over images.

    ``x0`` is ``(B, D)`` in [0, 255]; ``is_adversarial(X) -> (B,) bool`` queries the model's
    decision only. Starts from ``init`` (adversarial starting images, e.g. samples of another
    class, as the paper does for targeted attacks) or else from uniform noise, moves it to the
    decision boundary by a binary search towards ``x0``, then alternates a random step orthogonal
    to the direction to ``x0`` (on the sphere around ``x0``) with a step towards ``x0``, keeping
    a candidate only if it is still adversarial and closer to ``x0``; step sizes adapt to the
    success rate (simplified from the paper's windowed statistics). Candidates are rounded to
    integers before each query, so the results stay adversarial as uint8. Returns ``(B, D)``.
    """
    b, dim = x0.shape
    x = rng.uniform(0, 255, size=(b, dim)).round() if init is None else init.round()
    for _ in range(50):  # resample starting points that are not adversarial
        bad = ~is_adversarial(x)
        if not bad.any():
            break
        x[bad] = rng.uniform(0, 255, size=(int(bad.sum()), dim)).round()
    else:
        raise RuntimeError("boundary attack: no adversarial starting point found")
    lo, hi = np.zeros(b), np.ones(b)  # blend factor towards x0: lo stays adversarial
    for _ in range(12):
        mid = (lo + hi) / 2
        ok = is_adversarial((x + mid[:, None] * (x0 - x)).round())
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    x = (x + lo[:, None] * (x0 - x)).round()
    delta, eps = np.full(b, 0.1), np.full(b, 0.05)
    for _ in range(steps):
        diff = x0 - x
        dist = np.linalg.norm(diff, axis=1, keepdims=True) + 1e-12
        eta = rng.normal(size=(b, dim))
        u = diff / dist
        eta -= (eta * u).sum(axis=1, keepdims=True) * u  # orthogonal to the direction to x0
        eta *= delta[:, None] * dist / (np.linalg.norm(eta, axis=1, keepdims=True) + 1e-12)
        cand = x + eta
        d2 = cand - x0
        cand = x0 + d2 * (dist / (np.linalg.norm(d2, axis=1, keepdims=True) + 1e-12))
        cand = np.clip((cand + eps[:, None] * (x0 - cand)).round(), 0, 255)
        # rounding can undo a tiny step: accept only real progress
        ok = (np.linalg.norm(cand - x0, axis=1) < dist[:, 0]) & is_adversarial(cand)
        x[ok] = cand[ok]
        eps = np.clip(np.where(ok, eps * 1.3, eps * 0.8), 1e-4, 0.5)
        delta = np.clip(np.where(ok, delta * 1.1, delta * 0.95), 1e-3, 0.5)
    return x


class GTSRBStop(ImageDataset):
    """GTSRB stop signs (class 14) as the normal class, Deep SVDD's protocol.

    Training: the 780 stop-sign training images. Test (``anomalies="boundary"``, default): the
    270 stop-sign test images (normal) plus ``n_adversarial`` (20) adversarial examples made from
    randomly drawn stop-sign test images with a Boundary Attack. The papers attacked a trained
    CNN whose weights are not published; we attack a **nearest-class-mean surrogate classifier**
    fitted on ``surrogate_per_class`` training images of every class, so the adversarial images
    differ from the papers' and the numbers are not directly comparable. ``anomalies=
    "other-classes"`` is a plainly different substitute: all 12,630 test images, every non-stop
    sign anomalous. Images are cropped to the annotated ROI and resized to ``size`` (32).
    The test set is put in a fixed random order (``seed``) so order reveals nothing.
    """

    name = "gtsrb-stop"
    version = "1"
    description = "GTSRB stop signs vs boundary-attack adversarial examples (surrogate model)"
    folder_names = ("GTSRB", "gtsrb", "GTSRB/GTSRB")
    help_text = (
        "GTSRB layout under <data root>/GTSRB: Final_Training/Images/00014/*.ppm with "
        "GT-00014.csv (one folder per class), Final_Test/Images/*.ppm, and GT-final_test.csv "
        "(from GTSRB_Final_Test_GT.zip; in GTSRB/ or Final_Test/Images/).\n"
        "Get them with `occbench data fetch gtsrb-stop` or from "
        "https://benchmark.ini.rub.de/gtsrb_dataset.html."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "size": 32, "anomalies": "boundary", "n_adversarial": 20, "seed": 0,
        "attack_steps": 1000, "surrogate_per_class": 60,
    }

    def _p(self, key: str) -> Any:
        unknown = set(self.params) - set(self.defaults)
        if unknown:
            raise ValueError(f"gtsrb-stop: unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        return self.params.get(key, self.defaults[key])

    def classes(self) -> list[str]:
        return ["stop"]

    def folder(self) -> Path:
        for d in self._roots():
            if (d / "Final_Training" / "Images").is_dir():
                return d
        raise self._not_found("no Final_Training/Images folder found")

    def _train_dir(self, cls: int) -> Path:
        return self.folder() / "Final_Training" / "Images" / f"{cls:05d}"

    def _test_csv(self) -> Path:
        d = self.folder()
        p = fmt.first_existing([d / "GT-final_test.csv", d / "Final_Test" / "Images" /
                                "GT-final_test.csv", d.parent / "GT-final_test.csv"])
        if p is None:
            raise self._not_found("GT-final_test.csv (test classes) is missing")
        return p

    def _class_rows(self, cls: int) -> list[dict[str, str]]:
        d = self._train_dir(cls)
        return fmt.read_gtsrb_csv(d / f"GT-{cls:05d}.csv")

    def fingerprint(self) -> str:
        """Hash of the bytes of every file a job may read and the parameters.

        That is every file of every training class folder (the surrogate classifier reads
        ``surrogate_per_class`` images of each class, the stop class all of them), the test
        annotation CSV and every image of ``Final_Test/Images``.
        """
        d = self.folder()
        train = [p for c in sorted((d / "Final_Training" / "Images").iterdir()) if c.is_dir()
                 for p in sorted(c.iterdir()) if p.is_file()]
        test_dir = d / "Final_Test" / "Images"
        test = fmt.list_images(test_dir) if test_dir.is_dir() else []
        csv = self._test_csv()
        files = [*train, *test, *([] if csv in test else [csv])]
        return _content(self, files, d)

    def _train_images(self, cls: int, limit: int | None = None) -> np.ndarray:
        rows = self._class_rows(cls)
        if limit is not None and len(rows) > limit:  # spread over the tracks of 30 images
            rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).astype(int)]
        d, size = self._train_dir(cls), int(self._p("size"))
        return np.stack([_gtsrb_crop(d / r["Filename"], r, size) for r in rows])

    def _test_rows(self) -> list[dict[str, str]]:
        rows = fmt.read_gtsrb_csv(self._test_csv())
        if "ClassId" not in rows[0]:
            raise DatasetFormatError(
                f"{self._test_csv()}: has no ClassId column (this is the unlabelled "
                "GT-final_test.test.csv); use GT-final_test.csv from GTSRB_Final_Test_GT.zip"
            )
        return rows

    def _test_images(self, rows: list[dict[str, str]]) -> np.ndarray:
        d, size = self.folder() / "Final_Test" / "Images", int(self._p("size"))
        return np.stack([_gtsrb_crop(d / r["Filename"], r, size) for r in rows])

    def _plan(self) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
        """Test rows used, indices of stop rows attacked, and the test-order permutation."""
        rows = self._test_rows()
        rng = np.random.default_rng(int(self._p("seed")))
        if self._p("anomalies") == "other-classes":
            return rows, np.zeros(0, dtype=np.int64), rng.permutation(len(rows))
        if self._p("anomalies") != "boundary":
            raise ValueError("gtsrb-stop: anomalies must be 'boundary' or 'other-classes'")
        stop = [r for r in rows if int(r["ClassId"]) == GTSRB_STOP]
        if not stop:
            raise DatasetFormatError(f"{self._test_csv()}: no stop-sign (class 14) test images")
        n_adv = int(self._p("n_adversarial"))
        attacked = rng.choice(len(stop), size=n_adv, replace=n_adv > len(stop))
        return stop, attacked, rng.permutation(len(stop) + n_adv)

    def _surrogate(self) -> NearestMeanClassifier:
        base = self.folder() / "Final_Training" / "Images"
        classes = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())
        per = int(self._p("surrogate_per_class"))
        xs, ys = [], []
        for c in classes:
            imgs = self._train_images(c, per)
            xs.append(imgs.reshape(len(imgs), -1).astype(np.float64))
            ys.append(np.full(len(imgs), c))
        return NearestMeanClassifier(np.concatenate(xs), np.concatenate(ys))

    def adversarial_examples(self, originals: np.ndarray) -> np.ndarray:
        """Boundary-attack images ``(B, S, S, 3)`` uint8 that the surrogate does not call stop."""
        clf = self._surrogate()
        x0 = originals.reshape(len(originals), -1).astype(np.float64)
        rng = np.random.default_rng(int(self._p("seed")) + 1)
        # start from the nearest other class's mean image: from uniform noise the attack needs
        # tens of thousands of steps in 3,072 dimensions to get close to the boundary
        others = clf.means[clf.classes != GTSRB_STOP]
        nearest = np.argmin(((x0[:, None, :] - others[None]) ** 2).sum(-1), axis=1)
        adv = boundary_attack(x0, lambda x: clf.predict(x) != GTSRB_STOP, rng,
                              steps=int(self._p("attack_steps")), init=others[nearest])
        return np.clip(adv, 0, 255).astype(np.uint8).reshape(originals.shape)

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        """780 stop training images; test = stop test images + adversarial examples, shuffled.

        Reads ``GT-final_test.csv`` only to pick the stop-sign test images that define this
        test set; the returned order (fixed permutation) does not reveal which are attacked.
        """
        _resolve_class(self.name, normal_class, self.classes())
        train = self._train_images(GTSRB_STOP)
        rows, attacked, perm = self._plan()
        test = self._test_images(rows)
        if len(attacked):
            test = np.concatenate([test, self.adversarial_examples(test[attacked])])
        return DatasetSplit(train=ImageData(train),
                            test=ImageData(np.ascontiguousarray(test[perm])))

    def test_labels(self, normal_class: str | None = None) -> Labels:
        """``(N,)`` 0/1 in :meth:`load`'s test order; 1 = adversarial (or not a stop sign)."""
        _resolve_class(self.name, normal_class, self.classes())
        rows, attacked, perm = self._plan()
        if self._p("anomalies") == "other-classes":
            lab = np.array([int(r["ClassId"]) != GTSRB_STOP for r in rows], dtype=np.uint8)
            source = "gtsrb-stop:other-classes(GT-final_test.csv)"
        else:
            lab = np.concatenate([np.zeros(len(rows), np.uint8), np.ones(len(attacked), np.uint8)])
            source = (f"gtsrb-stop:boundary-attack(surrogate=nearest-class-mean,"
                      f"n={len(attacked)},steps={self._p('attack_steps')},seed={self._p('seed')})")
        return Labels({"": lab[perm]}, source=source)

    def check(self) -> CheckReport:
        rep = CheckReport(self.name)
        try:
            d = self.folder()
            rep.facts["folder"] = str(d)
            train_rows = self._class_rows(GTSRB_STOP)
            missing = [r["Filename"] for r in train_rows
                       if not (self._train_dir(GTSRB_STOP) / r["Filename"]).exists()]
            if missing:
                rep.errors.append(f"{len(missing)} stop training images listed in GT-00014.csv "
                                  f"are missing, e.g. {missing[0]}")
            rows = self._test_rows()
            tdir = d / "Final_Test" / "Images"
            tmissing = [r["Filename"] for r in rows if not (tdir / r["Filename"]).exists()]
            if tmissing:
                rep.errors.append(f"{len(tmissing)} test images listed in {self._test_csv()} are "
                                  f"missing from {tdir}, e.g. {tmissing[0]}")
            n_stop = sum(int(r["ClassId"]) == GTSRB_STOP for r in rows)
            rep.facts.update(train_stop=len(train_rows), test_images=len(rows), test_stop=n_stop)
            if (len(train_rows), len(rows), n_stop) != (780, 12630, 270):
                rep.warnings.append(f"counts (train stop {len(train_rows)}, test {len(rows)}, "
                                    f"test stop {n_stop}) differ from the official 780/12630/270")
        except (DatasetNotFoundError, DatasetFormatError, ValueError, KeyError) as exc:
            rep.errors.append(f"{type(exc).__name__}: {exc}")
        return rep

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["params"] = {**self.defaults, **d["params"]}
        return d


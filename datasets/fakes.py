"""Tiny fake datasets written in each official on-disk format (for tests, also third parties').

Like torchvision's ``test/datasets_utils.py``: each ``write_*`` function creates a small copy of
a dataset's layout with deterministic synthetic content under a folder and returns what a loader
should find (counts, per-video labels), so a test can compare. Nothing here downloads anything.

Synthetic videos show a grey gradient with a square moving across it; frames that are labelled
anomalous get a bright blob, so simple methods can even detect them.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    data = header + a.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def _class_images(labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator
                  ) -> np.ndarray:
    """Images whose mean brightness depends on the class (so classes are separable)."""
    base = (labels.astype(np.float64) * 20 + 30)[:, None]
    flat = base + rng.normal(0, 8, size=(len(labels), int(np.prod(shape))))
    return np.clip(flat, 0, 255).astype(np.uint8).reshape(len(labels), *shape)


def write_mnist(
    folder: Path, n_train_per_class: int = 5, n_test_per_class: int = 3, gz: bool = True,
    seed: int = 0, train: bool = True,
) -> dict[str, Any]:
    """The four MNIST IDX files (28x28, ten classes). ``train=False`` writes the test pair only."""
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    out: dict[str, Any] = {"folder": Path(folder)}
    splits = [("train", n_train_per_class), ("t10k", n_test_per_class)] if train else \
        [("t10k", n_test_per_class)]
    for split, n in splits:
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        y = y[rng.permutation(len(y))]
        x = _class_images(y, (28, 28), rng)
        write_idx(Path(folder) / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(Path(folder) / f"{split}-labels-idx1-ubyte{ext}", y)
        out[f"{split}_labels"] = y
    return out


def write_cifar10_batches(
    folder: Path, n_per_class_per_batch: int = 1, n_test_per_class: int = 2, seed: int = 0
) -> dict[str, Any]:
    """``data_batch_1..5``, ``test_batch`` and ``batches.meta`` as Python pickles (bytes keys)."""
    from occbench.datasets.images import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"folder": folder}

    def dump(name: str, n: int) -> np.ndarray:
        y = np.repeat(np.arange(10), n)
        x = _class_images(y, (3, 32, 32), rng).reshape(len(y), -1)  # row-major R, G, B planes
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": y.tolist(), b"data": x,
                         b"filenames": [f"{i}.png".encode() for i in range(len(y))]}, fh)
        return y

    out["train_labels"] = np.concatenate(
        [dump(f"data_batch_{i}", n_per_class_per_batch) for i in range(1, 6)])
    out["test_labels"] = dump("test_batch", n_test_per_class)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                     b"num_cases_per_batch": 10}, fh)
    return out


def write_cifar100(
    folder: Path, n_train_per_fine: int = 1, n_test_per_fine: int = 1, seed: int = 0,
    meta: bool = True,
) -> dict[str, Any]:
    """``train``, ``test`` and ``meta`` pickles of ``cifar-100-python`` (bytes keys).

    100 fine classes, 5 per superclass (a fixed random assignment, like the real one which is
    not ``fine // 5``); each split is shuffled. The mean brightness of an image is
    ``20 + 10 * coarse`` so a test can recover its superclass. Returns the ``coarse``/``fine``
    labels of each split (``train_coarse``, ``test_fine`` ...) and ``fine_to_coarse``.
    """
    from occbench.datasets.images import CIFAR100_COARSE

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fine_to_coarse = rng.permutation(np.repeat(np.arange(20), 5))
    out: dict[str, Any] = {"folder": folder, "fine_to_coarse": fine_to_coarse}
    for split, n in (("train", n_train_per_fine), ("test", n_test_per_fine)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        coarse = fine_to_coarse[fine]
        base = (20 + 10 * coarse.astype(np.float64))[:, None]
        data = np.clip(base + rng.normal(0, 6, size=(len(fine), 3072)), 0, 255).astype(np.uint8)
        with open(folder / split, "wb") as fh:  # row-major R, G, B 32x32 planes, like the real one
            pickle.dump({b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
                         b"batch_label": f"{split} batch".encode(),
                         b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(),
                         b"data": data}, fh)
        out[f"{split}_fine"], out[f"{split}_coarse"] = fine, coarse
    if meta:
        with open(folder / "meta", "wb") as fh:
            pickle.dump({b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                         b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE]}, fh)
    return out


def write_image_folders(
    folder: Path, classes: Sequence[str], n_train: int = 3, n_test: int = 2, size: int = 32,
    ext: str = ".png", seed: int = 0,
) -> dict[str, Any]:
    """``train/<class>/*.png`` and ``test/<class>/*.png`` (the image-folder layout)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(classes):
            d = Path(folder) / split / c
            d.mkdir(parents=True, exist_ok=True)
            imgs = _class_images(np.full(n, k), (size, size, 3), rng)
            for i, img in enumerate(imgs):
                cv2.imwrite(str(d / f"{i:04d}{ext}"), img)
    return {"folder": Path(folder), "classes": list(classes)}


def write_gtsrb(
    folder: Path, classes: Sequence[int] = (1, 14, 25), n_train: int = 6, n_test: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """GTSRB official layout: ``Final_Training/Images/000NN/*.ppm`` + ``GT-000NN.csv``,
    ``Final_Test/Images/*.ppm`` and ``GT-final_test.csv`` (semicolon separated)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"

    def sign(c: int) -> tuple[np.ndarray, list[int]]:
        h, w = (int(v) for v in rng.integers(30, 45, size=2))
        img = np.full((h, w, 3), 40, np.uint8)
        color = (int(c * 9 % 255), int(255 - c * 5), int(c * 17 % 255))
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 2 - 5, color, -1)
        img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
        return img, [w, h, 5, 5, w - 6, h - 6]

    for c in classes:
        d = folder / "Final_Training" / "Images" / f"{c:05d}"
        d.mkdir(parents=True, exist_ok=True)
        lines = [header]
        for i in range(n_train):
            img, meta = sign(c)
            name = f"{i // 3:05d}_{i % 3:05d}.ppm"
            cv2.imwrite(str(d / name), img)
            lines.append(";".join([name, *map(str, meta), str(c)]))
        (d / f"GT-{c:05d}.csv").write_text("\n".join(lines) + "\n")
    td = folder / "Final_Test" / "Images"
    td.mkdir(parents=True, exist_ok=True)
    lines = [header]
    test_classes = []
    k = 0
    for c in classes:
        for _ in range(n_test):
            img, meta = sign(c)
            name = f"{k:05d}.ppm"
            cv2.imwrite(str(td / name), img)
            lines.append(";".join([name, *map(str, meta), str(c)]))
            test_classes.append(c)
            k += 1
    (folder / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    return {"folder": folder, "test_classes": np.array(test_classes)}


# --------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------


def synthetic_frames(
    n: int, height: int = 48, width: int = 64, seed: int = 0,
    anomalous: np.ndarray | None = None,
) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 frames: gradient, moving square, bright blob on anomalous frames."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(40, 120, width, dtype=np.float64)[None, :].repeat(height, 0)
    out = np.empty((n, height, width, 3), np.uint8)
    s = max(4, height // 6)
    for t in range(n):
        f = grad + rng.normal(0, 3, size=grad.shape)
        x = (t * 3) % max(1, width - s)
        f[height // 3: height // 3 + s, x: x + s] = 200
        if anomalous is not None and anomalous[t]:
            f[-s - 2: -2, -s - 2: -2] = 255
        out[t] = np.clip(f, 0, 255).astype(np.uint8)[:, :, None]
    return out


def _labels_from(lengths: Sequence[int], anomalous: Sequence[tuple[int, int]] | None
                 ) -> list[np.ndarray]:
    """Per-video 0/1 labels; ``anomalous[i] = (a, b)`` marks frames a..b-1 (0-indexed)."""
    out = []
    for i, n in enumerate(lengths):
        lab = np.zeros(n, np.uint8)
        if anomalous is not None:
            a, b = anomalous[i]
            lab[a:b] = 1
        out.append(lab)
    return out


def _default_ranges(lengths: Sequence[int]) -> list[tuple[int, int]]:
    return [(n // 3, n) if i % 2 == 0 else (0, max(1, n // 2)) for i, n in enumerate(lengths)]


def _write_frames(d: Path, frames: np.ndarray, ext: str, digits: int, start: int = 0,
                  grey: bool = False) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        img = f[:, :, 0] if grey else f[:, :, ::-1]
        cv2.imwrite(str(d / f"{t + start:0{digits}d}{ext}"), img)


def _write_avi(path: Path, frames: np.ndarray, fps: float = 25.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not wr.isOpened():  # pragma: no cover - depends on the OpenCV build
        raise RuntimeError("OpenCV cannot write MJPG AVI files on this machine")
    for f in frames:
        wr.write(np.ascontiguousarray(f[:, :, ::-1]))
    wr.release()


def write_ped2_ucsd(
    folder: Path, train_lengths: Sequence[int] = (8, 6), test_lengths: Sequence[int] = (10, 7),
    anomalous: Sequence[tuple[int, int]] | None = None, height: int = 24, width: int = 36,
) -> dict[str, Any]:
    """Original UCSD layout under ``folder`` (= ``UCSDped2``): ``Train/Train001/001.tif``,
    ``Test/Test001/001.tif`` (+ an empty ``Test001_gt`` folder) and ``Test/UCSDped2.m``."""
    folder = Path(folder)
    anomalous = anomalous or _default_ranges(test_lengths)
    labels = _labels_from(test_lengths, anomalous)
    for i, n in enumerate(train_lengths):
        _write_frames(folder / "Train" / f"Train{i + 1:03d}",
                      synthetic_frames(n, height, width, seed=i), ".tif", 3, start=1, grey=True)
    lines = ["TestVideoFile = {};"]
    for i, n in enumerate(test_lengths):
        _write_frames(folder / "Test" / f"Test{i + 1:03d}",
                      synthetic_frames(n, height, width, 100 + i, labels[i]), ".tif", 3,
                      start=1, grey=True)
        (folder / "Test" / f"Test{i + 1:03d}_gt").mkdir(exist_ok=True)
        a, b = anomalous[i]
        lines.append(f"TestVideoFile{{end+1}}.gt_frame = [{a + 1}:{b}];")  # 1-indexed, inclusive
    (folder / "Test" / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    return {"folder": folder, "labels": {f"{i + 1:02d}": lab for i, lab in enumerate(labels)},
            "train_frames": sum(train_lengths)}


def write_ped2_frames(
    folder: Path, train_lengths: Sequence[int] = (8, 6), test_lengths: Sequence[int] = (10, 7),
    anomalous: Sequence[tuple[int, int]] | None = None, height: int = 24, width: int = 36,
    label_files: Sequence[str] = ("npy", "mat", "m"),
) -> dict[str, Any]:
    """Frames layout: ``training/frames/01/000.jpg``, ``testing/frames/01/000.jpg`` plus
    ``frame_labels_ped2.npy`` (shape ``(1, N)``), ``ped2.mat`` (``gt``) and/or ``UCSDped2.m``."""
    import scipy.io

    folder = Path(folder)
    anomalous = anomalous or _default_ranges(test_lengths)
    labels = _labels_from(test_lengths, anomalous)
    for i, n in enumerate(train_lengths):
        _write_frames(folder / "training" / "frames" / f"{i + 1:02d}",
                      synthetic_frames(n, height, width, seed=i), ".jpg", 3)
    for i, n in enumerate(test_lengths):
        _write_frames(folder / "testing" / "frames" / f"{i + 1:02d}",
                      synthetic_frames(n, height, width, 100 + i, labels[i]), ".jpg", 3)
    if "npy" in label_files:
        np.save(folder / "frame_labels_ped2.npy", np.concatenate(labels)[None, :].astype(np.int64))
    if "mat" in label_files:
        cells = np.empty((1, len(anomalous)), dtype=object)
        for i, (a, b) in enumerate(anomalous):
            cells[0, i] = np.array([[a + 1], [b]], dtype=np.uint8)
        scipy.io.savemat(str(folder / "ped2.mat"), {"gt": cells})
    if "m" in label_files:
        lines = ["TestVideoFile = {};"] + [
            f"TestVideoFile{{end+1}}.gt_frame = [{a + 1}:{b}];" for a, b in anomalous]
        (folder / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    return {"folder": folder, "labels": {f"{i + 1:02d}": lab for i, lab in enumerate(labels)},
            "train_frames": sum(train_lengths)}


def write_avenue_masks(folder: Path, labels: Mapping[str, np.ndarray], height: int, width: int
                       ) -> None:
    """``testing_label_mask/N_label.mat`` with ``volLabel`` (1 x T cells of H x W uint8)."""
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    for vid, lab in labels.items():
        cells = np.empty((1, len(lab)), dtype=object)
        for t, v in enumerate(lab):
            m = np.zeros((height, width), np.uint8)
            if v:
                m[2:5, 3:7] = 1
            cells[0, t] = m
        scipy.io.savemat(str(folder / f"{int(vid)}_label.mat"), {"volLabel": cells},
                         do_compression=True)


def write_avenue(
    folder: Path, train_lengths: Sequence[int] = (9, 7), test_lengths: Sequence[int] = (10, 8, 6),
    anomalous: Sequence[tuple[int, int]] | None = None, layout: str = "official",
    present_test: Sequence[int] | None = None, height: int = 36, width: int = 64,
) -> dict[str, Any]:
    """Avenue in the ``official`` layout (``training_videos/01.avi``, ``testing_videos/01.avi``,
    ``testing_label_mask/N_label.mat``) or the ``frames`` layout; always writes the concatenated
    ``frame_labels_avenue.npy``, which (like the real one) differs from the masks: the first
    anomalous frame of each odd-numbered video is marked normal there.

    ``present_test`` (0-based indices) writes only some test videos (masks for all).
    """
    folder = Path(folder)
    anomalous = anomalous or _default_ranges(test_lengths)
    labels = _labels_from(test_lengths, anomalous)
    ids = [f"{i + 1:02d}" for i in range(len(test_lengths))]
    present = range(len(test_lengths)) if present_test is None else present_test
    for i, n in enumerate(train_lengths):
        frames = synthetic_frames(n, height, width, seed=i)
        if layout == "official":
            _write_avi(folder / "training_videos" / f"{i + 1:02d}.avi", frames)
        else:
            _write_frames(folder / "training" / "frames" / f"{i + 1:02d}", frames, ".jpg", 4)
    for i in present:
        frames = synthetic_frames(test_lengths[i], height, width, 100 + i, labels[i])
        if layout == "official":
            _write_avi(folder / "testing_videos" / f"{ids[i]}.avi", frames)
        else:
            _write_frames(folder / "testing" / "frames" / ids[i], frames, ".jpg", 4)
    write_avenue_masks(folder / "testing_label_mask", dict(zip(ids, labels, strict=True)),
                       height, width)
    lntra = []
    for i, lab in enumerate(labels):
        lab = lab.copy()
        if i % 2 == 0 and lab.any():
            lab[int(np.argmax(lab))] = 0
        lntra.append(lab)
    np.save(folder / "frame_labels_avenue.npy", np.concatenate(lntra)[None, :])
    return {"folder": folder, "labels": dict(zip(ids, labels, strict=True)),
            "lntra": dict(zip(ids, lntra, strict=True)), "train_frames": sum(train_lengths)}


def write_shanghaitech(
    folder: Path, train: Mapping[str, int] | None = None, test: Mapping[str, int] | None = None,
    train_as: str = "videos", label_files: Sequence[str] = ("masks", "concatenated"),
    height: int = 36, width: int = 64,
) -> dict[str, Any]:
    """ShanghaiTech: ``training/videos/01_001.avi`` (or ``training/frames/01_001/000.jpg``),
    ``testing/frames/01_0014/000.jpg``, ``testing/test_frame_mask/01_0014.npy`` and
    ``frame_labels_shanghai.npy``."""
    folder = Path(folder)
    train = dict(train or {"01_001": 8, "02_001": 6})
    test = dict(test or {"01_0014": 9, "02_0128": 7})
    labels = dict(zip(test, _labels_from(list(test.values()), _default_ranges(list(test.values()))),
                      strict=True))
    for i, (vid, n) in enumerate(train.items()):
        frames = synthetic_frames(n, height, width, seed=i)
        if train_as == "videos":
            _write_avi(folder / "training" / "videos" / f"{vid}.avi", frames)
        else:
            _write_frames(folder / "training" / "frames" / vid, frames, ".jpg", 3)
    for i, (vid, n) in enumerate(test.items()):
        _write_frames(folder / "testing" / "frames" / vid,
                      synthetic_frames(n, height, width, 100 + i, labels[vid]), ".jpg", 3)
    if "masks" in label_files:
        md = folder / "testing" / "test_frame_mask"
        md.mkdir(parents=True, exist_ok=True)
        for vid, lab in labels.items():
            np.save(md / f"{vid}.npy", lab.astype(np.int64))
    if "concatenated" in label_files:
        np.save(folder / "frame_labels_shanghai.npy",
                np.concatenate(list(labels.values()))[None, :].astype(np.uint8))
    return {"folder": folder, "labels": labels, "train_frames": sum(train.values())}

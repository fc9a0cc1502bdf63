"""Built-in datasets that need no download: ``digits`` and ``toy-video``."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from occbench.harness.api import (
    Dataset,
    DatasetSplit,
    ImageData,
    Labels,
    Modality,
    Video,
    VideoData,
)


def _param_fingerprint(name: str, version: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"name": name, "version": version, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _digits_content() -> str:
    """SHA-256 of the bundled ``sklearn/datasets/data/digits.csv.gz`` that ``load_digits`` reads.

    Found without importing scikit-learn (seconds on a busy machine), hashed through the digest
    cache; ``"unknown"`` if the file is not where it is expected.
    """
    import importlib.util

    from occbench.datasets.digest import DigestCache

    spec = importlib.util.find_spec("sklearn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        f = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if f.is_file():
            return DigestCache().digests([f])[0]
    return "unknown"


@lru_cache(maxsize=1)
def _digits_split(test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # pixel values are 0..16; scale to the uint8 range every method expects
    images = np.clip(d.images * 16, 0, 255).astype(np.uint8)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, d.target, test_size=test_fraction, stratify=d.target, random_state=0
    )
    return x_tr, x_te, y_tr, y_te


class Digits(Dataset):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), one vs rest.

    A fixed stratified split (``test_fraction`` of each class, ``random_state=0``) gives the
    test set; a job's normal class trains on that class's training images only. Images are
    ``(N, 8, 8, 1)`` uint8 (the 0..16 intensities times 16). Classes are ``"0"``..``"9"``.
    """

    name: ClassVar[str] = "digits"
    modality: ClassVar[Modality] = "image"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "scikit-learn 8x8 digits, one-vs-rest, built in"

    def __init__(self, root: Any = None, test_fraction: float = 0.4) -> None:
        super().__init__(root, test_fraction=test_fraction)
        self.test_fraction = test_fraction

    def classes(self) -> list[str]:
        return [str(i) for i in range(10)]

    def fingerprint(self) -> str:
        """Parameters plus a hash of the bundled data file (a scikit-learn that ships other
        digits gives other job ids)."""
        return _param_fingerprint(self.name, self.version,
                                  {**self.params, "_content": _digits_content()})

    def _check_class(self, normal_class: str | None) -> int:
        if normal_class not in self.classes():
            raise ValueError(f"digits: normal class must be one of {self.classes()}, "
                             f"got {normal_class!r}")
        return int(normal_class)  # type: ignore[arg-type]

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        c = self._check_class(normal_class)
        x_tr, x_te, y_tr, _ = _digits_split(self.test_fraction)
        return DatasetSplit(ImageData(x_tr[y_tr == c]), ImageData(x_te))

    def test_labels(self, normal_class: str | None = None) -> Labels:
        c = self._check_class(normal_class)
        _, _, _, y_te = _digits_split(self.test_fraction)
        return Labels({"": (y_te != c).astype(np.int8)}, source="sklearn.datasets.load_digits")


# --------------------------------------------------------------------------------------------
# toy-video
# --------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A fixed smooth texture (a 'pavement'), float in [40, 110]."""
    from scipy.ndimage import gaussian_filter

    tex = gaussian_filter(rng.normal(size=(size, size)), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min() + 1e-9)
    return 40.0 + 70.0 * tex


def _draw(frame: np.ndarray, y: float, x: float, shape: str) -> None:
    h, w = frame.shape
    yy, xx = np.mgrid[0:h, 0:w]
    if shape == "person":  # a small upright ellipse
        mask = ((yy - y) / 4.0) ** 2 + ((xx - x) / 2.0) ** 2 <= 1.0
        frame[mask] = 220.0
    elif shape == "cart":  # a large square: the anomalous shape
        mask = (np.abs(yy - y) <= 5) & (np.abs(xx - x) <= 5)
        frame[mask] = 250.0
    else:  # pragma: no cover - internal
        raise ValueError(shape)


def make_toy_video(rng: np.random.Generator, size: int, n_frames: int, n_people: int,
                   anomaly: str | None, span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One video ``(T, size, size, 1)`` uint8 and its ``(T,)`` labels.

    Normal: people walk left/right at 0.5–1.2 px/frame. Within ``span`` one actor is anomalous:
    ``"speed"`` (4 px/frame), ``"direction"`` (moving vertically) or ``"shape"`` (a cart).
    """
    bg = _background(rng, size)
    ys = rng.uniform(8, size - 8, n_people)
    xs = rng.uniform(4, size - 4, n_people)
    vx = rng.uniform(0.5, 1.2, n_people) * rng.choice([-1, 1], n_people)
    frames = np.empty((n_frames, size, size, 1), np.uint8)
    labels = np.zeros(n_frames, np.int8)
    a_y, a_x = size / 2.0, size / 4.0
    for t in range(n_frames):
        f = bg + rng.normal(0, 3.0, bg.shape)  # sensor noise
        xs = (xs + vx) % size
        for i in range(n_people):
            _draw(f, ys[i], xs[i], "person")
        if anomaly is not None and span[0] <= t < span[1]:
            labels[t] = 1
            k = t - span[0]
            if anomaly == "speed":
                _draw(f, a_y, (a_x + 4.0 * k) % size, "person")
            elif anomaly == "direction":
                _draw(f, (4 + 1.0 * k) % size, a_x, "person")
            else:
                _draw(f, a_y, (a_x + 0.8 * k) % size, "cart")
        frames[t, ..., 0] = np.clip(f, 0, 255).astype(np.uint8)
    return frames, labels


class ToyVideo(Dataset):
    """A deterministic synthetic surveillance scene with frame-level labels, built in.

    Grey 48x48 frames (by default) of small figures walking left/right over a textured
    background; each test video has one anomalous span in which an actor moves too fast, moves
    in the wrong direction, or has the wrong shape (the kind cycles over test videos).
    Defaults: 4 training and 4 test videos of 80 frames (640 frames in all). ``seed`` changes
    the scene.
    """

    name: ClassVar[str] = "toy-video"
    modality: ClassVar[Modality] = "video"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "procedural surveillance-like video with anomalous spans"

    KINDS = ("speed", "direction", "shape")

    def __init__(self, root: Any = None, seed: int = 0, n_train: int = 4, n_test: int = 4,
                 n_frames: int = 80, size: int = 48, n_people: int = 3) -> None:
        super().__init__(root, seed=seed, n_train=n_train, n_test=n_test, n_frames=n_frames,
                         size=size, n_people=n_people)
        self.seed, self.n_train, self.n_test = seed, n_train, n_test
        self.n_frames, self.size, self.n_people = n_frames, size, n_people
        if n_frames < 8:
            raise ValueError("toy-video: n_frames must be at least 8")

    def fingerprint(self) -> str:
        return _param_fingerprint(self.name, self.version, self.params)

    def _generate(self) -> tuple[list[Video], list[Video], dict[str, np.ndarray]]:
        return _toy_generate(self.seed, self.n_train, self.n_test, self.n_frames, self.size,
                             self.n_people)

    def load(self, normal_class: str | None = None) -> DatasetSplit:
        if normal_class is not None:
            raise ValueError("toy-video has no classes")
        train, test, _ = self._generate()
        return DatasetSplit(VideoData(tuple(train)), VideoData(tuple(test)))

    def test_labels(self, normal_class: str | None = None) -> Labels:
        _, _, labels = self._generate()
        return Labels(labels, source=f"toy-video v{self.version} generator")


@lru_cache(maxsize=4)
def _toy_generate(seed: int, n_train: int, n_test: int, n_frames: int, size: int,
                  n_people: int) -> tuple[list[Video], list[Video], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    train = []
    for i in range(n_train):
        fr, _ = make_toy_video(rng, size, n_frames, n_people, None, (0, 0))
        fr.setflags(write=False)
        train.append(Video(f"train_{i:02d}", fr))
    test, labels = [], {}
    for i in range(n_test):
        kind = ToyVideo.KINDS[i % len(ToyVideo.KINDS)]
        start = int(rng.integers(n_frames // 4, n_frames // 2))
        length = int(rng.integers(n_frames // 5, n_frames // 3))
        fr, lab = make_toy_video(rng, size, n_frames, n_people, kind, (start, start + length))
        fr.setflags(write=False)
        vid = f"test_{i:02d}"
        test.append(Video(vid, fr))
        labels[vid] = lab
    return train, test, labels

"""Augmentation-made anomalies (ADACL, Khazaie et al.): cut-paste, puzzle, rotation, mix-up.

All functions take ``uint8`` images of shape ``(N, H, W, C)`` and a ``numpy`` generator and
return a new ``uint8`` array of the same shape; the input is never modified. Every output image
differs from its input unless the input is (locally) constant, where no augmentation can change it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check(images: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"augmentations want uint8 (N, H, W, C) images with C in {{1, 3}}, "
            f"got {images.dtype} {images.shape}"
        )


def cut_paste(images: np.ndarray, rng: np.random.Generator,
              min_frac: float = 0.15, max_frac: float = 0.4) -> np.ndarray:
    """Copy a random rectangle (side ``min_frac``..``max_frac`` of the image) to another place."""
    _check(images)
    out = images.copy()
    n, h, w, _ = images.shape
    for i in range(n):
        ph = int(rng.integers(max(1, round(min_frac * h)), max(2, round(max_frac * h)) + 1))
        pw = int(rng.integers(max(1, round(min_frac * w)), max(2, round(max_frac * w)) + 1))
        ph, pw = min(ph, h - 1), min(pw, w - 1)
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        # Destination drawn away from the source so the paste actually moves content.
        for _ in range(10):
            dy, dx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            if abs(dy - sy) >= ph // 2 or abs(dx - sx) >= pw // 2:
                break
        out[i, dy:dy + ph, dx:dx + pw] = images[i, sy:sy + ph, sx:sx + pw]
    return out


# The 23 non-identity orderings of the four quarters (TL, TR, BL, BR).
_PERMS = np.array([p for p in np.ndindex(4, 4, 4, 4)
                   if len(set(p)) == 4 and p != (0, 1, 2, 3)], dtype=np.int64)


def puzzle(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut each image into quarters and reassemble them in a random non-identity order.

    Odd sizes: the central row/column stays in place (quarters must have equal shapes).
    """
    _check(images)
    out = images.copy()
    n, h, w, _ = images.shape
    hh, hw = h // 2, w // 2
    oy, ox = h - 2 * hh, w - 2 * hw  # 0 or 1: skip a middle line for odd sizes
    corners = [(0, 0), (0, hw + ox), (hh + oy, 0), (hh + oy, hw + ox)]
    perms = _PERMS[rng.integers(0, len(_PERMS), size=n)]
    for i in range(n):
        quarters = [images[i, y:y + hh, x:x + hw] for y, x in corners]
        for dst, src in enumerate(perms[i]):
            y, x = corners[dst]
            out[i, y:y + hh, x:x + hw] = quarters[src]
    return out


def rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate each image by 90° or 270° (chosen at random); non-square images are resized back.

    For non-square images the rotated array is resampled to ``(H, W)`` by nearest neighbour.
    """
    _check(images)
    n = images.shape[0]
    ks = rng.choice([1, 3], size=n)
    out = np.empty_like(images)
    for i in range(n):
        out[i] = _rot(images[i], int(ks[i]))
    return out


def _rot(img: np.ndarray, k: int) -> np.ndarray:
    r = np.rot90(img, k=k, axes=(0, 1))
    h, w = img.shape[:2]
    if r.shape[:2] != (h, w):
        ys = (np.arange(h) * r.shape[0] // h).clip(0, r.shape[0] - 1)
        xs = (np.arange(w) * r.shape[1] // w).clip(0, r.shape[1] - 1)
        r = r[ys][:, xs]
    return r


def mixup_rotated(images: np.ndarray, rng: np.random.Generator,
                  low: float = 0.35, high: float = 0.65) -> np.ndarray:
    """``lam * x + (1 - lam) * rot(x)`` with ``lam ~ U(low, high)`` and rot by 90°, 180° or 270°."""
    _check(images)
    n = images.shape[0]
    lam = np.asarray(rng.uniform(low, high, size=n), dtype=np.float64)
    ks = rng.choice([1, 2, 3], size=n)
    out = np.empty_like(images)
    for i in range(n):
        mixed = lam[i] * images[i].astype(np.float32) + (1 - lam[i]) * _rot(images[i], int(ks[i]))
        out[i] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


AUGMENTATIONS: dict[str, Augmentation] = {
    "cut_paste": cut_paste,
    "puzzle": puzzle,
    "rotate": rotate,
    "mixup": mixup_rotated,
}


def make_anomalies(images: np.ndarray, rng: np.random.Generator,
                   kinds: Sequence[str] = tuple(AUGMENTATIONS)) -> tuple[np.ndarray, np.ndarray]:
    """One created anomaly per image, each with an augmentation drawn uniformly from ``kinds``.

    Returns ``(anomalies, kind_index)``: ``uint8 (N, H, W, C)`` and ``(N,)`` indices into
    ``kinds``.
    """
    _check(images)
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown or not kinds:
        raise ValueError(f"unknown augmentations {unknown} (known: {sorted(AUGMENTATIONS)})")
    which = rng.integers(0, len(kinds), size=len(images))
    out = np.empty_like(images)
    for j, k in enumerate(kinds):
        idx = np.flatnonzero(which == j)
        if len(idx):
            out[idx] = AUGMENTATIONS[k](images[idx], rng)
    return out, which

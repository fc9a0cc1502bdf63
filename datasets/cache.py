"""Decoded-frame cache: each video decoded once per (size, channels) into a uint8 ``.npy`` memmap.

Layout under the cache directory (``$OCCBENCH_CACHE``, default ``~/.cache/occbench``)::

    frames/<dataset>/<hash of the source folder>/<video_id>_<H>x<W>x<C>.npy   (T, H, W, C) uint8
    frames/<dataset>/<hash of the source folder>/<video_id>_<H>x<W>x<C>.json  source fingerprint

Derived label files (Avenue's mask labels) are memoised elsewhere (:func:`label_cache_root`), and
the sidecars name no source folder: a method's memmaps lead here, and nothing here leads to labels.

An entry is valid while the ``.json`` records the same source fingerprint (names, sizes,
mtimes, ctimes and inodes of the source files: a stat-based key, cheap enough to check on every
load) and cache format version; otherwise it is rebuilt. This key is only the cache's own; job
identity uses the content fingerprint of :mod:`occbench.datasets.digest`. Entries are
written to a temporary file and renamed into place under a file lock, so concurrent jobs build
each entry once and a crashed build never leaves a half-written array behind.

Clips of ``T`` frames are drawn straight from the memmaps with :func:`gather_clips` or the
map-style :class:`ClipIndex` (usable directly as a ``torch.utils.data.Dataset``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from occbench.datasets.digest import default_cache_dir
from occbench.harness.api import DatasetFormatError

#: Bump when decoding/resizing changes so old entries are rebuilt.
CACHE_FORMAT_VERSION = 1


def cache_root() -> Path:
    """The cache directory: ``$OCCBENCH_CACHE``, else ``$XDG_CACHE_HOME/occbench``, else
    ``~/.cache/occbench`` (shared with the digest cache of :mod:`occbench.datasets.digest`)."""
    return default_cache_dir()


def label_cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where label files derived from the source (e.g. Avenue's masks) are memoised:
    ``$OCCBENCH_LABEL_CACHE``, else beside the frame cache as ``<cache>-labels``.

    Never inside the frame cache: a method's memmaps point into that tree.
    """
    env = os.environ.get("OCCBENCH_LABEL_CACHE")
    if env and cache_dir is None:
        return Path(env)
    base = Path(cache_dir) if cache_dir is not None else cache_root()
    return base.with_name(base.name + "-labels")


def _size_tag(size: tuple[int, int] | None, channels: int) -> str:
    return f"{'native' if size is None else f'{size[0]}x{size[1]}'}x{channels}"


class FrameCache:
    """Builds and serves memory-mapped decoded frames (see module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = (Path(root) if root is not None else cache_root()) / "frames"

    def entry_path(
        self, dataset: str, source_dir: Path, video_id: str,
        size: tuple[int, int] | None, channels: int,
    ) -> Path:
        """Where the ``.npy`` for this video and resolution lives."""
        src = hashlib.sha256(str(Path(source_dir).resolve()).encode()).hexdigest()[:12]
        safe_vid = video_id.replace("/", "_").replace(os.sep, "_")
        return self.root / dataset / src / f"{safe_vid}_{_size_tag(size, channels)}.npy"

    def lookup(self, npy: Path, fingerprint: str) -> np.ndarray | None:
        """The cached memmap if present and built from ``fingerprint``, else ``None``."""
        meta = npy.with_suffix(".json")
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if info.get("fingerprint") != fingerprint or info.get("version") != CACHE_FORMAT_VERSION:
            return None
        try:
            arr = np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if list(arr.shape) != info.get("shape"):
            return None
        return arr

    def get(
        self,
        *,
        dataset: str,
        source_dir: Path,
        video_id: str,
        fingerprint: str,
        size: tuple[int, int] | None,
        channels: int,
        decode: Callable[[], Iterable[np.ndarray]],
        n_frames_hint: int = 0,
    ) -> np.ndarray:
        """Read-only ``(T, H, W, C)`` uint8 memmap of one video, decoding it on a miss.

        ``decode`` yields ``(H, W, C)`` uint8 frames already at ``size``/``channels``;
        ``n_frames_hint`` (e.g. the number of frame files) lets the build write in place.
        """
        npy = self.entry_path(dataset, source_dir, video_id, size, channels)
        hit = self.lookup(npy, fingerprint)
        if hit is not None:
            return hit
        npy.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(npy) + ".lock"):
            hit = self.lookup(npy, fingerprint)  # another process may have built it meanwhile
            if hit is not None:
                return hit
            shape = _build(npy, decode, n_frames_hint, video_id)
            meta = {"fingerprint": fingerprint, "version": CACHE_FORMAT_VERSION,
                    "shape": list(shape), "video_id": video_id}
            # no source path here: a method sees these memmaps (unsealed), and the source folder
            # sits beside the label files
            tmp_meta = npy.with_suffix(f".json.tmp{os.getpid()}")
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp_meta, npy.with_suffix(".json"))
        arr = self.lookup(npy, fingerprint)
        if arr is None:  # pragma: no cover - only if the disk is changing under us
            raise DatasetFormatError(f"frame cache entry {npy} vanished right after being built")
        return arr


def _build(
    npy: Path, decode: Callable[[], Iterable[np.ndarray]], hint: int, video_id: str
) -> tuple[int, ...]:
    """Decode into ``npy`` via a temporary file renamed into place; return the array shape."""
    tmp = npy.with_name(npy.name + f".tmp{os.getpid()}")
    mm: np.memmap | None = None
    extra: list[np.ndarray] = []
    n = 0
    try:
        for frame in decode():
            if mm is None:
                mm = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.uint8, shape=(max(hint, 1), *frame.shape)
                )
            if frame.shape != mm.shape[1:]:
                raise DatasetFormatError(
                    f"video {video_id!r}: frame {n} is {frame.shape}, earlier frames "
                    f"{mm.shape[1:]}; frames of one video must share a size"
                )
            if n < mm.shape[0]:
                mm[n] = frame
            else:
                extra.append(frame)
            n += 1
        if mm is None or n == 0:
            raise DatasetFormatError(f"video {video_id!r}: no frames could be decoded")
        if n != mm.shape[0]:  # the hint was wrong (e.g. an AVI header): rewrite at true length
            head = np.asarray(mm[: min(n, mm.shape[0])])
            full = np.concatenate([head, *[e[None] for e in extra]])
            mm.flush()
            del mm
            mm = None
            _save_exact(tmp, full)
            shape: tuple[int, ...] = full.shape
        else:
            mm.flush()
            shape = tuple(mm.shape)
            del mm
            mm = None
        os.replace(tmp, npy)
        return shape
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_exact(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (np.save would append ``.npy`` to other suffixes)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(arr))


# --------------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------------


def clip_starts(n_frames: int, clip_len: int, skip: int = 1, stride: int = 1) -> np.ndarray:
    """Start indices of every clip of ``clip_len`` frames taken every ``skip`` frames.

    A clip starting at ``s`` covers frames ``s, s+skip, ..., s+(clip_len-1)*skip``; starts are
    ``0, stride, 2*stride, ...`` while the clip fits in the video.
    """
    span = (clip_len - 1) * skip + 1
    if n_frames < span:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_frames - span + 1, stride, dtype=np.int64)


def gather_clips(
    frames: np.ndarray, starts: Sequence[int] | np.ndarray, clip_len: int, skip: int = 1
) -> np.ndarray:
    """Clips ``(B, clip_len, H, W, C)`` uint8 from one video's frames ``(T, H, W, C)``."""
    starts = np.asarray(starts, dtype=np.int64)
    if skip == 1:
        # contiguous slices: one sequential read per clip, faster on memmaps than fancy indexing
        return np.stack([np.asarray(frames[s: s + clip_len]) for s in starts])
    idx = starts[:, None] + np.arange(clip_len) * skip
    return np.asarray(frames[idx.ravel()]).reshape(len(starts), clip_len, *frames.shape[1:])


class ClipIndex:
    """Every clip of several videos, addressable by one integer (a map-style dataset).

    ``ClipIndex(videos, 16)[i]`` is a ``(16, H, W, C)`` uint8 array; pass the object straight to
    ``torch.utils.data.DataLoader(clips, collate_fn=ClipIndex.collate)`` (``num_workers=0`` is
    enough: the data already sits in memory maps).
    """

    def __init__(
        self, videos: Sequence[np.ndarray], clip_len: int, skip: int = 1, stride: int = 1
    ) -> None:
        self.videos = list(videos)
        self.clip_len = clip_len
        self.skip = skip
        pairs = [
            np.stack([np.full(len(s), v, dtype=np.int64), s], axis=1)
            for v, f in enumerate(self.videos)
            if len(s := clip_starts(len(f), clip_len, skip, stride))
        ]
        self.index = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        v, s = self.index[i]
        f = self.videos[int(v)]
        return np.asarray(f[int(s): int(s) + (self.clip_len - 1) * self.skip + 1: self.skip])

    @staticmethod
    def collate(clips: Sequence[np.ndarray]) -> Any:
        """``collate_fn`` for a DataLoader: one copy into a writable ``(B, T, H, W, C)`` tensor.

        (The default collate would wrap the read-only memmap slices first and warn.)
        """
        import torch  # only needed when used with a DataLoader

        return torch.from_numpy(np.stack(clips))

    def batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Several clips at once, ``(B, clip_len, H, W, C)``."""
        return np.stack([self[int(i)] for i in indices])

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` clips drawn uniformly at random (with replacement)."""
        return self.batch(rng.integers(0, len(self), size=batch_size))

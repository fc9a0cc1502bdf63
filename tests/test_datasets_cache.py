"""Frame cache: built once, reused, rebuilt when the source changes; clip drawing."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from occbench.datasets import fakes
from occbench.datasets.cache import ClipIndex, FrameCache, clip_starts, gather_clips
from occbench.datasets.video import Ped2, VideoSource


@pytest.fixture
def ped2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))
    fakes.write_ped2_frames(tmp_path / "data" / "ped2", label_files=("npy",))
    return tmp_path / "data"


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    orig = VideoSource.decode

    def spy(self: VideoSource, size: object, channels: int):  # type: ignore[no-untyped-def]
        calls.append(self.video_id)
        return orig(self, size, channels)  # type: ignore[arg-type]

    monkeypatch.setattr(VideoSource, "decode", spy)
    return calls


def test_cache_reused_then_rebuilt_on_change(ped2: Path, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    calls = _count_decodes(monkeypatch)
    first = Ped2(ped2, size=[16, 16], channels=1).load()
    assert len(calls) == 4  # 2 train + 2 test videos decoded once
    a = np.array(first.test.videos[0].frames)
    second = Ped2(ped2, size=[16, 16], channels=1).load()
    assert len(calls) == 4  # nothing decoded again
    np.testing.assert_array_equal(second.test.videos[0].frames, a)
    # another resolution is a separate entry
    Ped2(ped2, size=[8, 8], channels=1).load()
    assert len(calls) == 8
    # change one source frame: only that video is rebuilt, with the new content
    f = sorted((ped2 / "ped2" / "testing" / "frames" / "01").iterdir())[0]
    cv2.imwrite(str(f), np.full((24, 36), 255, np.uint8))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    third = Ped2(ped2, size=[16, 16], channels=1).load()
    assert calls[8:] == ["01"]
    assert third.test.videos[0].frames[0].min() > 240 and a[0].min() < 240
    files = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in files if ".tmp" in p.name]  # atomic writes leave nothing behind
    assert len([p for p in files if p.suffix == ".npy"]) == 8


def test_cache_off_decodes_in_memory(ped2: Path, tmp_path: Path) -> None:
    split = Ped2(ped2, size=[16, 16], cache=False).load()
    assert not isinstance(split.train.videos[0].frames, np.memmap)
    assert not (tmp_path / "cache" / "frames").exists()


@pytest.mark.parametrize("hint", [0, 3, 5, 9])
def test_cache_build_with_wrong_frame_count_hint(tmp_path: Path, hint: int) -> None:
    frames = fakes.synthetic_frames(5, 8, 10)
    cache = FrameCache(tmp_path)
    arr = cache.get(dataset="x", source_dir=tmp_path, video_id="v", fingerprint="f1",
                    size=None, channels=3, decode=lambda: iter(frames), n_frames_hint=hint)
    assert arr.shape == (5, 8, 10, 3)
    np.testing.assert_array_equal(arr, frames)


def test_clip_helpers() -> None:
    v = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(2, axis=1)
    assert clip_starts(20, 16).tolist() == [0, 1, 2, 3, 4]
    assert clip_starts(20, 4, skip=2, stride=5).tolist() == [0, 5, 10]
    assert clip_starts(3, 4).size == 0
    c = gather_clips(v, [0, 4], 16)
    assert c.shape == (2, 16, 2, 1, 1) and c[1, :, 0, 0, 0].tolist() == list(range(4, 20))
    c2 = gather_clips(v, [1], 4, skip=3)
    assert c2[0, :, 0, 0, 0].tolist() == [1, 4, 7, 10]
    idx = ClipIndex([v, v[:5]], 4, skip=1)
    assert len(idx) == 17 + 2
    assert idx[17][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    batch = ClipIndex.collate([idx[0], idx[1]])
    assert tuple(batch.shape) == (2, 4, 2, 1, 1)
    s = idx.sample(3, np.random.default_rng(0))
    assert s.shape == (3, 4, 2, 1, 1)


def test_concurrent_builders_decode_once(tmp_path: Path) -> None:
    import threading
    import time

    frames = fakes.synthetic_frames(6, 8, 10)
    calls: list[int] = []

    def decode():  # type: ignore[no-untyped-def]
        calls.append(1)
        time.sleep(0.2)  # keep the first builder busy while the second one arrives
        yield from frames

    out: list[np.ndarray] = []

    def build() -> None:
        out.append(FrameCache(tmp_path).get(
            dataset="x", source_dir=tmp_path, video_id="v", fingerprint="f", size=None,
            channels=3, decode=decode, n_frames_hint=6))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 3
    assert all(np.array_equal(o, frames) for o in out)

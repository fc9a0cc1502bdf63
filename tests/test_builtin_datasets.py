"""The built-in datasets: digits (one vs rest) and toy-video (procedural, frame labels)."""

from __future__ import annotations

import numpy as np
import pytest
from occbench.datasets.builtin import Digits, ToyVideo
from occbench.harness.api import ImageData, LabelAccessError, VideoData, labels_blocked


def test_digits_one_vs_rest() -> None:
    ds = Digits()
    assert ds.classes() == [str(i) for i in range(10)]
    split = ds.load("3")
    lab = ds.test_labels("3").per_video[""]
    assert isinstance(split.train, ImageData) and split.train.images.shape[1:] == (8, 8, 1)
    assert split.train.images.dtype == np.uint8
    assert len(lab) == len(split.test) == 719  # 40 % stratified of 1,797
    # every test image of class 3 is normal; the ~10 % normal share holds
    assert 0.08 < 1 - lab.mean() < 0.12
    # training holds class 3 only: its images equal some test-normal statistics, not others
    assert len(split.train) == 110
    with pytest.raises(ValueError, match="normal class must be one of"):
        ds.load("x")


def test_toy_video_deterministic_and_labelled() -> None:
    a, b = ToyVideo(seed=1), ToyVideo(seed=1)
    sa, sb = a.load(), b.load()
    assert isinstance(sa.test, VideoData)
    for va, vb in zip(sa.test.videos, sb.test.videos, strict=True):
        np.testing.assert_array_equal(va.frames, vb.frames)
    labels = a.test_labels().per_video
    assert list(labels) == sa.test.video_ids
    for v in sa.test.videos:
        y = labels[v.video_id]
        assert len(y) == len(v) == 80
        assert 0 < y.sum() < len(y)  # every test video has normal and anomalous frames
        runs = np.flatnonzero(np.diff(np.r_[0, y, 0]))
        assert len(runs) == 2  # one contiguous anomalous span
    assert sa.train.n_items == 320 and sa.test.n_items == 320
    assert ToyVideo(seed=2).fingerprint() != a.fingerprint()
    c = ToyVideo(seed=2).load()
    assert not np.array_equal(c.test.videos[0].frames, sa.test.videos[0].frames)


def test_toy_video_anomalies_visible_in_pixels() -> None:
    # the anomalous spans change the frames: a pixel-level detector must have something to see
    ds = ToyVideo(seed=0)
    s = ds.load()
    lab = ds.test_labels().per_video
    v = s.test.videos[2]  # 'shape' anomaly: a bright cart
    bright = (v.frames[..., 0] >= 245).sum(axis=(1, 2))
    y = lab[v.video_id].astype(bool)
    assert bright[y].mean() > 50 and bright[~y].mean() < 5


def test_labels_blocked_guards_every_dataset() -> None:
    with labels_blocked(), pytest.raises(LabelAccessError, match="toy-video"):
        ToyVideo().test_labels()
    assert len(ToyVideo().test_labels().per_video) == 4  # restored afterwards

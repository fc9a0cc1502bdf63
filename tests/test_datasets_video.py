"""Video datasets on tiny fakes: UCSD TIF + .m, JPG + .npy/.mat, AVI + .mat masks, ShanghaiTech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from occbench.datasets import fakes, video
from occbench.datasets import formats as fmt
from occbench.datasets.video import Avenue, Ped2, ShanghaiTech, read_label_table
from occbench.harness.api import DatasetFormatError, DatasetNotFoundError, verify_labels_match


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.delenv("OCCBENCH_DATA", raising=False)
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_ped2_original_ucsd_layout(tmp_path: Path) -> None:
    info = fakes.write_ped2_ucsd(tmp_path / "UCSDped2")
    ds = Ped2(tmp_path, size=None, channels=1)
    split = ds.load()
    assert split.train.video_ids == ["01", "02"] and split.test.video_ids == ["01", "02"]
    assert [v.frames.shape for v in split.test.videos] == [(10, 24, 36, 1), (7, 24, 36, 1)]
    assert isinstance(split.test.videos[0].frames, np.memmap)
    assert not split.test.videos[0].frames.flags.writeable
    labels = ds.test_labels()
    assert _same(dict(labels.per_video), info["labels"]) and labels.source == "ped2:UCSDped2.m"
    verify_labels_match(split.test, labels)
    rep = ds.check()
    assert rep.ok, rep.errors
    assert rep.facts["layout"] == "ucsd" and rep.facts["train_frames"] == 14


@pytest.mark.parametrize(("kind", "fname"), [("npy", "frame_labels_ped2.npy"),
                                             ("mat", "ped2.mat"), ("ucsd-m", "UCSDped2.m")])
def test_ped2_frames_layout_each_label_file(tmp_path: Path, kind: str, fname: str) -> None:
    info = fakes.write_ped2_frames(tmp_path / "ped2")
    ds = Ped2(tmp_path, size=[16, 20], channels=3, labels=kind)
    labels = ds.test_labels()
    assert labels.source == f"ped2:{fname}"
    assert _same(dict(labels.per_video), info["labels"])
    split = ds.load()
    assert split.train.videos[0].frames.shape == (8, 16, 20, 3)
    assert ds.check().ok


def test_ped2_label_frame_mismatch_names_the_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("npy",))
    sorted((tmp_path / "ped2" / "testing" / "frames" / "02").iterdir())[-1].unlink()
    rep = Ped2(tmp_path).check()
    assert not rep.ok
    assert any("01=10, 02=6" in e for e in rep.errors), rep.errors
    # with known official per-video lengths the concatenated file is cut, and the video named
    monkeypatch.setattr(video, "PED2_TEST_LENGTHS", (10, 7))
    monkeypatch.setattr(Ped2, "official_test_ids", ("01", "02"))
    rep = Ped2(tmp_path).check()
    assert any(e.startswith("test video '02' has 6 frames but 7 frame labels") for e in rep.errors)
    # per-video UCSD ranges that run past the end of a video are caught as well
    fakes.write_ped2_frames(tmp_path / "b" / "ped2", label_files=("m",))
    sorted((tmp_path / "b" / "ped2" / "testing" / "frames" / "01").iterdir())[-1].unlink()
    rep = Ped2(tmp_path / "b").check()
    assert any("'01'" in e for e in rep.errors), rep.errors


def test_missing_dataset_names_layout_and_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"training/frames/01/000.jpg(.|\n)*svcl"):
        Ped2(tmp_path).load()
    with pytest.raises(DatasetNotFoundError, match="no data root"):
        Avenue().load()
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=())
    with pytest.raises(DatasetNotFoundError, match=r"UCSDped2.m"):
        Ped2(tmp_path).test_labels()
    with pytest.raises(ValueError, match="unknown parameter"):
        Ped2(tmp_path, sise=3).load()
    with pytest.raises(ValueError, match="labels='x'"):
        Ped2(tmp_path, labels="x").load()
    with pytest.raises(DatasetNotFoundError, match="'07' is not present"):
        Ped2(tmp_path, test_videos=["07"]).load()


def test_load_reads_no_label_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.write_avenue(tmp_path / "avenue", train_lengths=(4,), test_lengths=(5, 4))

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("load() read a label file")

    for f in ("read_avenue_mask", "read_concatenated_labels", "parse_ucsd_m", "read_ped2_mat"):
        monkeypatch.setattr(fmt, f, boom)
    assert len(Avenue(tmp_path, size=[8, 8]).load().test) == 2


def test_avenue_official_partial_and_lntra(tmp_path: Path) -> None:
    info = fakes.write_avenue(tmp_path / "avenue", test_lengths=(10, 8, 6), present_test=[0, 2])
    # video 02 is missing: strict everywhere unless the subset is named explicitly
    whole = Avenue(tmp_path, size=[12, 16])
    with pytest.raises(DatasetNotFoundError, match=r"\['02'\] are missing(.|\n)*test_videos"):
        whole.load()
    with pytest.raises(DatasetFormatError, match=r"\['02'\] have labels in avenue:official"):
        whole.test_labels()
    rep = whole.check()
    assert not rep.ok and any("['02'] have labels" in e for e in rep.errors), rep.errors
    off = Avenue(tmp_path, size=[12, 16], test_videos=["01", "03"])
    lntra = Avenue(tmp_path, size=[12, 16], labels="lntra", test_videos=["01", "03"])
    split = off.load()
    assert split.test.video_ids == ["01", "03"]
    assert split.test.videos[0].frames.shape == (10, 12, 16, 3)
    lo, ll = off.test_labels(), lntra.test_labels()
    assert lo.source == "avenue:official:testing_label_mask"
    assert ll.source.startswith("avenue:lntra:")
    assert np.array_equal(lo.per_video["03"], info["labels"]["03"])
    assert np.array_equal(ll.per_video["03"], info["lntra"]["03"])
    assert not np.array_equal(lo.per_video["01"], ll.per_video["01"])  # the sources differ
    rep = off.check()
    assert rep.ok and any("only 2 of 21" in w for w in rep.warnings)
    assert _same(dict(read_label_table(off)), info["labels"])  # all masks, present or not
    sub = Avenue(tmp_path, size=[12, 16], test_videos=["3"])
    assert sub.load().test.video_ids == ["03"] and list(sub.test_labels().per_video) == ["03"]
    assert sub.fingerprint() != off.fingerprint()


def test_avenue_frames_layout_and_missing_masks(tmp_path: Path) -> None:
    info = fakes.write_avenue(tmp_path / "avenue", layout="frames", test_lengths=(6, 5))
    ds = Avenue(tmp_path, channels=1, size=[8, 8])
    assert ds.check().facts["layout"] == "frames"
    assert _same(dict(ds.test_labels().per_video), info["labels"])
    assert ds.load().train.videos[0].frames.shape == (9, 8, 8, 1)
    for p in (tmp_path / "avenue" / "testing_label_mask").iterdir():
        p.unlink()
    with pytest.raises(DatasetNotFoundError, match="testing_label_mask"):
        ds.test_labels()


def test_corrupt_avi_and_mask_name_the_file(tmp_path: Path) -> None:
    fakes.write_avenue(tmp_path / "avenue", train_lengths=(4,), test_lengths=(5,))
    (tmp_path / "avenue" / "testing_videos" / "01.avi").write_bytes(b"garbage" * 10)
    ds = Avenue(tmp_path, size=[8, 8], cache=False)
    with pytest.raises(DatasetFormatError, match=r"01.avi"):
        ds.load()
    (tmp_path / "avenue" / "testing_label_mask" / "1_label.mat").write_bytes(b"nope")
    with pytest.raises(DatasetFormatError, match=r"1_label.mat"):
        Avenue(tmp_path, cache=False).test_labels()


@pytest.mark.parametrize("train_as", ["videos", "frames"])
def test_shanghaitech(tmp_path: Path, train_as: str) -> None:
    info = fakes.write_shanghaitech(tmp_path / "shanghaitech", train_as=train_as)
    masks = ShanghaiTech(tmp_path, size=[10, 12], channels=1)
    concat = ShanghaiTech(tmp_path, size=[10, 12], channels=1, labels="concatenated")
    split = masks.load()
    assert split.train.video_ids == ["01_001", "02_001"]
    assert split.test.video_ids == ["01_0014", "02_0128"]
    assert split.test.videos[1].frames.shape == (7, 10, 12, 1)
    assert masks.test_labels().source == "shanghaitech:test_frame_mask"
    assert concat.test_labels().source == "shanghaitech:frame_labels_shanghai.npy"
    assert _same(dict(masks.test_labels().per_video), info["labels"])
    assert _same(dict(concat.test_labels().per_video), info["labels"])
    assert masks.check().ok and concat.check().ok


def test_concatenated_labels_wrong_length(tmp_path: Path) -> None:
    fakes.write_shanghaitech(tmp_path / "shanghaitech", label_files=("concatenated",))
    np.save(tmp_path / "shanghaitech" / "frame_labels_shanghai.npy", np.zeros((1, 5), np.uint8))
    rep = ShanghaiTech(tmp_path).check()
    assert any("frame_labels_shanghai.npy: 5 concatenated" in e for e in rep.errors), rep.errors


def test_avenue_official_release_folder_names(tmp_path: Path) -> None:
    # the official zips unpack to "Avenue Dataset/" and "ground_truth_demo/testing_label_mask/"
    info = fakes.write_avenue(tmp_path / "Avenue Dataset", train_lengths=(4,), test_lengths=(5, 4))
    d = tmp_path / "Avenue Dataset"
    (d / "ground_truth_demo").mkdir()
    (d / "testing_label_mask").rename(d / "ground_truth_demo" / "testing_label_mask")
    ds = Avenue(tmp_path, size=[8, 8])
    assert _same(dict(ds.test_labels().per_video), info["labels"])
    assert ds.check().ok

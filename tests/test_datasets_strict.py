"""Strict data: truncated files and missing videos or frames are errors naming what and how to
fix it, in ``load``/``test_labels``/``check``, ``occbench data check`` and ``occbench run``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from occbench.datasets import fakes
from occbench.datasets import formats as fmt
from occbench.datasets.video import Avenue, Ped2
from occbench.harness.api import DatasetFormatError, DatasetNotFoundError
from occbench.harness.cli.data import check_dataset, register
from occbench.harness.cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


def _data_app() -> typer.Typer:
    a = typer.Typer()

    @a.command()
    def version() -> None:  # a second command so that `data` stays a sub-command
        pass

    register(a)
    return a


def _ped2(tmp_path: Path, n_test: int = 3) -> Path:
    fakes.write_ped2_frames(tmp_path / "ped2", train_lengths=(8, 6),
                            test_lengths=(10, 7, 9)[:n_test], label_files=("m",))
    return tmp_path


def _truncate(f: Path, keep: float = 0.6) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------------------------
# truncated files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
def test_truncated_jpeg_is_an_error_naming_the_file_in_load(tmp_path: Path, cache: bool) -> None:
    root = _ped2(tmp_path)
    bad = root / "ped2" / "testing" / "frames" / "02" / "004.jpg"
    assert Ped2(root, size=None, cache=cache).load()  # fine before
    _truncate(bad, 0.9)
    # OpenCV alone decodes it: only libjpeg's "Premature end of JPEG file" on stderr
    import cv2

    assert cv2.imread(str(bad)) is not None
    with pytest.raises(DatasetFormatError, match=r"02/004.jpg is a truncated JPEG"):
        Ped2(root, size=None, cache=cache).load()


def test_truncated_jpeg_is_an_error_in_check_and_data_check(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    bad = root / "ped2" / "training" / "frames" / "01" / "002.jpg"
    _truncate(bad)
    rep = Ped2(root).check()
    assert not rep.ok
    assert [e for e in rep.errors if str(bad) in e and "truncated JPEG" in e], rep.errors
    r = runner.invoke(_data_app(), ["data", "check", "ped2", "--data-root", str(root)])
    assert r.exit_code == 1
    assert "002.jpg" in r.output and "truncated" in r.output


def test_complete_jpegs_pass_even_with_bytes_after_the_end_marker(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    f = root / "ped2" / "testing" / "frames" / "01" / "000.jpg"
    f.write_bytes(f.read_bytes() + b"\x00\x00EXTRA-TRAILER-DATA")  # e.g. a camera's trailer
    assert fmt.jpeg_file_problem(f) is None
    assert Ped2(root).check().ok
    assert fmt.read_image(f).shape == (24, 36, 3)


def test_truncated_avi_is_an_error_naming_the_file(tmp_path: Path) -> None:
    fakes.write_avenue(tmp_path / "avenue", train_lengths=(12,), test_lengths=(10, 8))
    bad = tmp_path / "avenue" / "testing_videos" / "02.avi"
    _truncate(bad, 0.6)
    with pytest.raises(DatasetFormatError, match=r"02.avi: the AVI header announces 8 frames"):
        Avenue(tmp_path, size=[8, 8]).load()


# --------------------------------------------------------------------------------------------
# missing videos and frames
# --------------------------------------------------------------------------------------------


def test_a_deleted_test_video_is_an_error_in_load_labels_and_check(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    shutil.rmtree(root / "ped2" / "testing" / "frames" / "02")
    with pytest.raises(DatasetNotFoundError, match=r"\['02'\] are missing(.|\n)*test_videos="):
        Ped2(root).load()
    with pytest.raises(DatasetFormatError, match=r"\['02'\] have labels in ped2:UCSDped2.m"):
        Ped2(root).test_labels()
    rep = check_dataset("ped2", root)
    assert not rep.ok and any("['02']" in e and 'test_videos=["01", "03"]' in e
                              for e in rep.errors), rep.errors
    r = runner.invoke(_data_app(), ["data", "check", "ped2", "--data-root", str(root)])
    assert r.exit_code == 1 and "'02'" in r.output


def test_the_last_test_video_deleted_is_caught_through_the_labels(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    shutil.rmtree(root / "ped2" / "testing" / "frames" / "03")  # no gap left in the numbering
    with pytest.raises(DatasetFormatError, match=r"\['03'\] have labels"):
        Ped2(root).test_labels()
    assert any("['03']" in e for e in Ped2(root).check().errors)


def test_an_explicit_subset_is_allowed_and_is_another_entry(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    whole = Ped2(root).fingerprint()
    shutil.rmtree(root / "ped2" / "testing" / "frames" / "02")
    sub = Ped2(root, test_videos=["01", "03"])
    assert sub.load().test.video_ids == ["01", "03"]
    assert list(sub.test_labels().per_video) == ["01", "03"]
    assert sub.check().ok
    assert sub.fingerprint() != whole


def test_a_frame_missing_inside_a_video_is_an_error(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    (root / "ped2" / "testing" / "frames" / "01" / "004.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"video '01'.*004.jpg missing"):
        Ped2(root).load()
    rep = Ped2(root).check()
    assert any("004.jpg missing" in e for e in rep.errors), rep.errors


def _spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "strict"\nseeds = [0]\n[[methods]]\nname = "iforest"\n'
                    'params = { n_estimators = 10 }\n[[datasets]]\nname = "ped2"\n'
                    'params = { size = [8, 8], channels = 1 }\n')
    return spec


def test_run_refuses_a_copy_with_a_deleted_test_video(tmp_path: Path) -> None:
    root = _ped2(tmp_path)
    shutil.rmtree(root / "ped2" / "testing" / "frames" / "02")
    args = ["run", str(_spec(tmp_path)), "--store", str(tmp_path / "store"), "--data-root",
            str(root), "--runner", "serial", "--no-board"]
    r = runner.invoke(app, args)
    assert r.exit_code != 0 and "'02'" in r.output, r.output
    assert not (tmp_path / "store" / "runs").exists() or \
        not any((tmp_path / "store" / "runs").iterdir())
    # without the pre-check the job itself fails (load), and nothing is stored as done
    r = runner.invoke(app, [*args, "--no-check-data"])
    assert r.exit_code != 0 and "'02'" in r.output, r.output
    assert "1 failed" in r.output or "failed" in r.output


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


def test_idx_garbage_pixels_are_reported_by_data_check(tmp_path: Path) -> None:
    fakes.write_mnist(tmp_path / "mnist")
    p = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    fakes.write_idx(p, np.random.default_rng(3).integers(0, 256, (30, 28, 28), dtype=np.uint8))
    rep = check_dataset("mnist", tmp_path)
    assert any(str(p) in w and "MD5 differs" in w for w in rep.warnings), rep.warnings
    p.write_bytes(b"\x00\x00\x08\x07" + p.read_bytes()[4:])  # not gzip any more
    rep = check_dataset("mnist", tmp_path)
    assert not rep.ok and any(str(p) in e for e in rep.errors), rep.errors

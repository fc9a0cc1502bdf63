"""``occbench data`` commands, ``check_dataset`` and the data-root resolution order."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from occbench.datasets import fakes
from occbench.harness.cli.data import check_dataset, parse_params, register
from occbench.harness.dataroot import resolve_data_root
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.delenv("OCCBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OCCBENCH_CACHE", str(tmp_path / "cache"))


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def version() -> None:  # a second command so that `data` stays a sub-command
        pass

    register(app)
    return app


def test_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_root(None) is None
    cfg = tmp_path / "config" / "occbench" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('data_root = "/from/config"\n')
    assert resolve_data_root(None) == Path("/from/config")
    monkeypatch.setenv("OCCBENCH_DATA_ROOT", "/from/env")
    assert resolve_data_root(None) == Path("/from/env")
    assert resolve_data_root("/from/cli") == Path("/from/cli")
    monkeypatch.delenv("OCCBENCH_DATA_ROOT")
    cfg.write_text('data_root = "data"\n')  # relative to the config file
    assert resolve_data_root(None) == (cfg.parent / "data").resolve()
    monkeypatch.setenv("OCCBENCH_DATA_ROOT", "/from/env")
    monkeypatch.delenv("OCCBENCH_DATA_ROOT")
    cfg.write_text("data_root = [unclosed")
    with pytest.raises(ValueError, match=r"config.toml"):
        resolve_data_root(None)


def test_parse_params() -> None:
    assert parse_params(["size=[64, 64]", "labels=lntra", "channels=1", "cache=false"]) == {
        "size": [64, 64], "labels": "lntra", "channels": 1, "cache": False}
    with pytest.raises(ValueError, match="key=value"):
        parse_params(["oops"])


def test_data_check_command(tmp_path: Path) -> None:
    fakes.write_ped2_frames(tmp_path / "ped2", label_files=("npy",))
    runner = CliRunner()
    res = runner.invoke(_app(), ["data", "check", "ped2", "--data-root", str(tmp_path),
                                 "--param", "size=[8,8]"])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "anomalous_frames" in res.output
    sorted((tmp_path / "ped2" / "testing" / "frames" / "01").iterdir())[0].unlink()
    res = runner.invoke(_app(), ["data", "check", "ped2", "--data-root", str(tmp_path)])
    assert res.exit_code == 1 and "FAILED" in res.output
    res = runner.invoke(_app(), ["data", "check", "ped2", "--data-root", str(tmp_path / "x")])
    assert res.exit_code == 1 and "no Ped2 folder" in res.output


def test_data_fetch_command_manual_and_offline(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(_app(), ["data", "fetch", "avenue"])
    assert res.exit_code == 1 and "cuhk.edu.hk" in res.output
    res = runner.invoke(_app(), ["data", "fetch", "mnist"])
    assert res.exit_code == 2  # no data root


def test_check_dataset_api(tmp_path: Path) -> None:
    assert not check_dataset("no-such-dataset", tmp_path).ok
    assert "unknown dataset" in check_dataset("no-such-dataset", tmp_path).errors[0]
    fakes.write_mnist(tmp_path / "mnist")
    rep = check_dataset("mnist", tmp_path, {})
    assert rep.ok and rep.facts["test_images"] == 30
    assert not check_dataset("ped2", tmp_path, {"channels": 2}).ok

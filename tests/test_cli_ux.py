"""The command line as a new user meets it (issue 12): one `error:` line naming the fix for each
user error (exit 2), ad-hoc runs, --dry-run, --limit, --version, --format, plain progress lines
and untruncated tables off a terminal, conformance checks before a run, provenance of plugins."""

from __future__ import annotations

import csv
import io
import json
import socket
import time
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar

import plugins_for_tests  # noqa: F401  (registers the test-* methods)
import pytest
from occbench.harness import registry
from occbench.harness.api import Context, Data, Method
from occbench.harness.cli.main import app
from typer.testing import CliRunner

runner = CliRunner()

ADHOC = ["run", "--methods", "ocsvm,iforest", "--datasets", "digits,toy-video", "--classes",
         "0,3", "--seeds", "0", "--runner", "serial"]


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def assert_one_error(r: object, *needles: str) -> str:
    """Exit 2, exactly one line and it starts with `error:`, no traceback."""
    out = r.output  # type: ignore[attr-defined]
    assert r.exit_code == 2, out  # type: ignore[attr-defined]
    assert "Traceback" not in out, out
    lines = error_lines(out)
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def adhoc_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("adhoc")
    r = runner.invoke(app, [*ADHOC, "--store", str(d / "store")])
    assert r.exit_code == 0, r.output
    return d / "store"


# -- ad-hoc runs, --limit, --dry-run ----------------------------------------------------------


def test_adhoc_run_without_a_spec(adhoc_store: Path) -> None:
    from occbench.harness.store.runstore import RunStore

    st = RunStore(adhoc_store)
    jobs = [st.record(j)["job"] for j in st.job_ids()]
    # 2 methods × (digits × 2 classes + toy-video) × 1 seed; --classes applies to images only
    assert len(jobs) == 6
    assert {(j["dataset"], j["normal_class"]) for j in jobs} == {
        ("digits", "0"), ("digits", "3"), ("toy-video", None)}
    assert {j["seed"] for j in jobs} == {0}


def test_plugin_package_and_version_in_provenance(adhoc_store: Path) -> None:
    from occbench.harness.store.runstore import RunStore

    st = RunStore(adhoc_store)
    prov = st.record(st.job_ids()[0])["provenance"]
    assert prov["plugins"]["method"]["package"] == "occbench"
    assert prov["plugins"]["method"]["version"] == version("occbench")
    assert prov["plugins"]["dataset"]["name"] in ("digits", "toy-video")


def test_output_off_a_terminal_has_progress_lines_and_whole_tables(tmp_path: Path) -> None:
    r = runner.invoke(app, [*ADHOC, "--store", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    progress = [ln for ln in r.output.splitlines() if ln.startswith("progress ")]
    # one line at the start and one per finished job here (6 jobs: every job is 10 %+), and
    # one more whenever 5 s pass between events (a first job with the sandbox's start-up)
    assert progress[0].startswith("progress 0/6 jobs") and progress[-1].startswith(
        "progress 6/6 jobs (100 %)")
    done = [int(ln.split()[1].split("/")[0]) for ln in progress]
    assert sorted(set(done)) == list(range(7)) and done == sorted(done)
    assert len(progress) <= 7 + 3
    # a job whose run is being stored is not "running": one job at a time runs serially
    assert all("running 2" not in ln for ln in progress)
    # a CliRunner is not a terminal: rich would cut the table to 80 columns ("datas…")
    assert "…" not in r.output
    assert "AUC %" in r.output and "toy-video" in r.output and "iforest" in r.output


def test_dry_run_runs_nothing_and_limit_runs_the_first_jobs(adhoc_store: Path,
                                                            tmp_path: Path) -> None:
    r = runner.invoke(app, [*ADHOC[:-2], "--seeds", "0,1", "--store", str(adhoc_store),
                            "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "12 jobs, 6 in" in r.output and "6 would run (dry run: nothing ran)" in r.output
    assert r.output.count("in store") == 6 and r.output.count("would run") == 7
    fresh = tmp_path / "fresh"
    r = runner.invoke(app, [*ADHOC, "--store", str(fresh), "--dry-run", "--limit", "2"])
    assert r.exit_code == 0 and not fresh.exists(), r.output
    assert r.output.count("left by --limit") == 4
    r = runner.invoke(app, [*ADHOC, "--store", str(fresh), "--limit", "2", "--no-board"])
    assert r.exit_code == 0, r.output
    assert "2 ok, 0 failed" in r.output and "4 left by --limit" in r.output
    assert len(list((fresh / "runs").iterdir())) == 2


def test_adhoc_and_spec_errors_are_one_line() -> None:
    assert_one_error(runner.invoke(app, ["run"]), "--methods and --datasets")
    assert_one_error(runner.invoke(app, ["run", "--methods", "ocsvm"]), "--datasets")
    assert_one_error(runner.invoke(app, ["run", "quick", "--methods", "ocsvm"]), "not both")
    assert_one_error(runner.invoke(app, [*ADHOC[:7], "--seeds", "a,b"]), "integers")
    assert_one_error(runner.invoke(app, ["run", "-m", "ocsmv", "-d", "digits"]),
                     "did you mean 'ocsvm'")
    assert_one_error(runner.invoke(app, ["run", "-m", "ocsvm", "-d", "digits", "--classes",
                                         "11"]), "unknown classes")


# -- --store that is not a store --------------------------------------------------------------


def test_store_that_is_a_file_or_missing(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    assert_one_error(runner.invoke(app, ["run", "quick", "--store", str(f)]), "is a file")
    assert_one_error(runner.invoke(app, ["refresh", "quick", "--store", str(f)]), "is a file")
    for verb in (["store", "status"], ["board"], ["export"]):
        assert_one_error(runner.invoke(app, [*verb, "--store", str(f)]), "is a file")
        assert_one_error(runner.invoke(app, [*verb, "--store", str(tmp_path / "none")]),
                         "not a run store", "occbench run")
    assert not (tmp_path / "none").exists()


# -- plugins that are broken ------------------------------------------------------------------


class RaisesInInit(Method):
    name: ClassVar[str] = "test-raises-in-init"

    def __init__(self, k: int = 1) -> None:
        raise RuntimeError("plugin bug: cannot build")

    def fit(self, train: Data, context: Context) -> Method:
        return self

    def score(self, test: Data, context: Context):  # type: ignore[no-untyped-def]
        return None


def test_plugin_whose_init_raises_is_one_line(tmp_path: Path) -> None:
    registry.methods.register(RaisesInInit, source="tests")
    try:
        r = runner.invoke(app, ["run", "-m", "test-raises-in-init", "-d", "digits", "--store",
                                str(tmp_path / "s")])
    finally:
        registry.methods.unregister(RaisesInInit.name)
    assert_one_error(r, "test-raises-in-init", "__init__ raised RuntimeError",
                     "plugin bug: cannot build", "fix the plugin")


def _fake_dist(tmp: Path, dist: str, module: str, body: str, eps: dict[str, str]) -> None:
    (tmp / f"{module}.py").write_text(body)
    info = tmp / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in eps.items())
    (info / "entry_points.txt").write_text(f"[occbench.methods]\n{lines}\n")


PLUGIN = '''
from occbench.methods.classic import OCSVM
class Mine(OCSVM):
    name = "{name}"
'''


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(tmp_path))
    # put back exactly what was there: other test modules register classes at import time
    # (test-cheater, test-ticks, ...) and a plain reset would lose them for later tests
    saved = registry.methods.snapshot()
    registry.methods.reset()
    yield tmp_path
    monkeypatch.undo()
    registry.methods.restore(saved)


def test_duplicate_entry_point_is_one_line(fresh_registry: Path) -> None:
    _fake_dist(fresh_registry, "dup_ad", "dup_ad", PLUGIN.format(name="ocsvm"),
               {"ocsvm": "dup_ad:Mine"})
    line = assert_one_error(runner.invoke(app, ["list", "methods"]), "registered twice",
                            "dup_ad", "uninstall one or rename it")
    assert "occbench" in line


def test_misnamed_entry_point_is_reported_and_the_rest_listed(fresh_registry: Path) -> None:
    _fake_dist(fresh_registry, "odd_ad", "odd_ad", PLUGIN.format(name="other"),
               {"odd": "odd_ad:Mine"})
    r = runner.invoke(app, ["list", "methods"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "ocsvm" in r.output
    broken = [ln for ln in r.output.splitlines() if ln.startswith("broken plugin odd")]
    assert len(broken) == 1 and "must be equal" in broken[0]


# -- conformance before a run -----------------------------------------------------------------


def test_run_refuses_a_method_failing_conformance(tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", "-m", "ocsvm,test-nan", "-d", "digits", "--classes", "0",
                            "--store", str(tmp_path / "s"), "--runner", "serial"])
    assert_one_error(r, "'test-nan'", "conformance check 'scores'", "occbench validate test-nan")
    assert not list((tmp_path / "s" / "runs").glob("*"))  # no job ran, not even ocsvm's


# -- --version, --format ----------------------------------------------------------------------


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"occbench {version('occbench')}"


def test_list_formats() -> None:
    r = runner.invoke(app, ["list", "methods", "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["ocsvm"]["package"] == "occbench"
    assert rows["ocsvm"]["package_version"] == version("occbench")
    assert rows["ocsvm"]["description"]  # every built-in says what it is
    r = runner.invoke(app, ["list", "datasets", "-f", "csv"])
    got = list(csv.DictReader(io.StringIO(r.output)))
    assert {"digits", "toy-video"} <= {row["name"] for row in got}
    assert list(got[0]) == ["name", "modality", "version", "package", "package_version",
                            "description"]
    r = runner.invoke(app, ["list", "protocols", "-f", "md"])
    lines = r.output.splitlines()
    assert lines[0].startswith("| id | modality") and lines[1].startswith("|---|")
    assert all(ln.startswith("| ") for ln in lines[2:]) and len(lines) > 3
    r = runner.invoke(app, ["list", "nothing"])
    assert r.exit_code == 2


def test_store_status_and_board_formats(adhoc_store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["store", "status", "--store", str(adhoc_store), "-f", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 6 and {x["status"] for x in rows} == {"ok"}
    r = runner.invoke(app, ["board", "--store", str(adhoc_store), "--out", str(tmp_path / "b"),
                            "--no-site", "--bootstrap", "0", "-f", "csv"])
    assert r.exit_code == 0, r.output
    board = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {(b["method"], b["dataset"]) for b in board} == {
        (m, d) for m in ("ocsvm", "iforest") for d in ("digits", "toy-video")}
    assert all(0.5 < float(b["auc_mean"]) <= 1 for b in board)
    assert not (tmp_path / "b").exists()  # --no-site with --format: stdout only, no files
    r = runner.invoke(app, ["board", "--store", str(adhoc_store), "--out", str(tmp_path / "b"),
                            "--no-site", "--bootstrap", "0", "-f", "md"])
    assert r.exit_code == 0, r.output
    first, blank, header = r.stdout.splitlines()[:3]
    assert first.startswith("Mean ± std over seeds; AUC: micro frame AUC for video")
    assert blank == "" and header.startswith("| dataset | method |")
    assert not (tmp_path / "b").exists()


def test_the_board_explains_the_marks_it_shows(tmp_path: Path) -> None:
    """A mark like [unsealed] in the method column comes with a line saying what it means,
    under the terminal table and above the Markdown one; a table without marks has none."""
    store = tmp_path / "s"
    r = runner.invoke(app, ["run", "-m", "iforest", "-d", "digits", "--classes", "0",
                            "--seeds", "0", "--unsealed", "--store", str(store)])
    assert r.exit_code == 0, r.output
    why = "[unsealed]: some runs ran outside the sandbox"
    r = runner.invoke(app, ["board", "--store", str(store), "--no-site", "-f", "md",
                            "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert f"`{why}" in r.stdout.splitlines()[0] and "iforest [unsealed]" in r.stdout
    r = runner.invoke(app, ["board", "--store", str(store), "--out", str(tmp_path / "t"),
                            "--no-site", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert why in " ".join(r.output.split())
    assert (tmp_path / "t" / "leaderboard.csv").exists()  # the terminal table: tables written
    assert "[transductive]:" not in r.output  # only the marks it shows


# -- Ray addresses ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_ray_address_fails_fast(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    r = runner.invoke(app, ["run", "-m", "ocsvm", "-d", "digits", "--classes", "0", "--store",
                            str(tmp_path / "s"), "--runner", "ray", "--no-check-methods",
                            "--address", f"127.0.0.1:{_free_port()}"])
    assert time.perf_counter() - t0 < 15
    assert_one_error(r, "cannot reach a Ray cluster", "ray start --head")
    r = runner.invoke(app, ["run", "-m", "ocsvm", "-d", "digits", "--classes", "0", "--store",
                            str(tmp_path / "s"), "--runner", "ray", "--no-check-methods",
                            "--address", "no-port-here"])
    assert_one_error(r, "expected auto, HOST:PORT")


# -- data roots -------------------------------------------------------------------------------


def test_both_data_root_variables_are_accepted(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from occbench.datasets.formats import env_data_root
    from occbench.harness.dataroot import resolve_data_root

    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.setenv("OCCBENCH_DATA", str(tmp_path / "old"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert resolve_data_root(None) == tmp_path / "old" == env_data_root()
    monkeypatch.setenv("OCCBENCH_DATA_ROOT", str(tmp_path / "new"))  # the documented name wins
    assert resolve_data_root(None) == tmp_path / "new" == env_data_root()
    assert resolve_data_root(str(tmp_path / "cli")) == tmp_path / "cli"


def test_explicit_data_root_never_falls_back_to_the_system_copy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from occbench.datasets import fakes
    from occbench.datasets.images import FashionMNIST
    from occbench.harness.api import DatasetNotFoundError

    monkeypatch.delenv("OCCBENCH_DATA_ROOT", raising=False)
    monkeypatch.delenv("OCCBENCH_DATA", raising=False)
    sysdir = tmp_path / "usr-share" / "fashion-mnist"
    fakes.write_mnist(sysdir, n_train_per_class=2, n_test_per_class=1)
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(sysdir),))
    assert FashionMNIST().load("bag").train.n_items == 2  # no root at all: the system copy
    empty = tmp_path / "root"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as ei:
        FashionMNIST(empty).load("bag")
    assert str(sysdir) in str(ei.value) and "ln -s" in str(ei.value)
    assert str(empty) in str(ei.value)


def test_fashion_mnist_classes_accept_indices(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from occbench.datasets import fakes
    from occbench.harness.run.spec import expand, spec_from_dict

    fakes.write_mnist(tmp_path / "fashion-mnist", n_train_per_class=2, n_test_per_class=1)

    def classes(want: list[object]) -> list[str | None]:
        sp = spec_from_dict({"methods": [{"name": "ocsvm"}], "datasets": [
            {"name": "fashion-mnist", "classes": want}]})
        return [j.normal_class for j in expand(sp, tmp_path).jobs]

    assert classes([8, "0"]) == ["bag", "tshirt"]
    assert classes([8]) == classes(["bag"])  # the same job either way


# -- shell completion -------------------------------------------------------------------------


def test_shell_completion_of_verbs_arguments_and_options() -> None:
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("occbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "occbench.harness"]

    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "_OCCBENCH_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(cword)}
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    assert complete("occbench li", 1) == ["list"]
    assert complete("occbench list ", 2) == ["methods", "datasets", "protocols"]
    assert "--dry-run" in complete("occbench run --dr", 2)
    assert complete("occbench store st", 2) == ["status"]


# -- the no-op rerun's table ------------------------------------------------------------------


def test_rerun_table_is_cached_by_store_content(adhoc_store: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from occbench.harness.cli.main import board_cache, board_key
    from occbench.harness.store.runstore import RunStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    st = RunStore(adhoc_store)
    key = board_key(st)
    assert key is not None and key == board_key(st)
    r = runner.invoke(app, [*ADHOC, "--store", str(adhoc_store)])
    assert r.exit_code == 0 and "ran 0 jobs" in r.output, r.output
    cached = board_cache() / f"{key}.json"
    rows = json.loads(cached.read_text())["rows"]
    assert len(rows) == 4 and all(row[0] in r.output for row in rows)
    # the cache is what a rerun prints ...
    cached.write_text(json.dumps({"columns": ["dataset"], "rows": [["SENTINEL"]],
                                  "superseded": 0, "incomplete": 0}))
    r = runner.invoke(app, [*ADHOC, "--store", str(adhoc_store)])
    assert "SENTINEL" in r.output
    # ... until any file of the store changes (a run added, rescored, pruned)
    rec = adhoc_store / "runs" / st.job_ids()[0] / "record.json"
    s = rec.stat()
    os.utime(rec, ns=(s.st_atime_ns, s.st_mtime_ns + 1_000_000))
    assert board_key(st) != key
    r = runner.invoke(app, [*ADHOC, "--store", str(adhoc_store)])
    assert "SENTINEL" not in r.output and "AUC %" in r.output


def test_refresh_check_reports_what_it_can_when_some_data_is_missing(tmp_path: Path) -> None:
    """`refresh --check` on a spec whose Fashion-MNIST is not under the data root checks the
    rest (digits needs no files) and names the missing dataset in one line with its job
    count; exit 1 (not known to be up to date). A real refresh still stops on it (exit 2)."""
    spec = tmp_path / "two.toml"
    spec.write_text('name = "two"\nseeds = [0]\n[[methods]]\nname = "ocsvm"\n'
                    '[[datasets]]\nname = "digits"\nclasses = ["0"]\n'
                    '[[datasets]]\nname = "fashion-mnist"\nclasses = ["0", "1"]\n')
    empty = tmp_path / "data"
    empty.mkdir()
    args = ["refresh", str(spec), "--store", str(tmp_path / "s"), "--data-root", str(empty)]
    r = runner.invoke(app, [*args, "--check"])
    assert r.exit_code == 1, r.output
    assert "0 jobs up to date" in r.output and "1 to run" in r.output
    missing = [ln for ln in r.output.splitlines() if "not checked" in ln]
    assert len(missing) == 1 and missing[0].startswith("2 jobs not checked, their data is "
                                                       "not here:") and "fashion-mnist" in \
        missing[0]
    r = runner.invoke(app, [*args, "--check", "--dry-run"])
    assert r.exit_code == 2 and "give one" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "fashion-mnist" in r.output
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())

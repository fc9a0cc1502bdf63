"""Issue 11 (findings 2, 3, 10): the board writes only into a folder it owns and deletes only its
own previous output; names from records, sweeps and plugins never make a path outside the store
or ``--out``; failures are listed by entry, class and seed with their reason, escaped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from occbench.harness.cli.main import app
from occbench.harness.run.sweep import (
    SweepError,
    SweepSpec,
    run_sweep,
    sweep_from_dict,
    sweep_table_path,
)
from occbench.harness.store.paths import (
    UnsafePathError,
    check_name,
    inside,
    is_job_id,
    safe_name,
    validate_job_id,
)
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard.site import LOCK, MARKER, SiteError, SiteOptions, build_site
from occbench.leaderboard.synthetic import SynthMethod, make_store
from typer.testing import CliRunner

EVIL = "evil<script>window.__pwned = 1</script>"
OPTS = SiteOptions(n_boot=0)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to prove nothing changed)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _small_store(path: Path, methods: tuple[SynthMethod, ...] = (SynthMethod("alpha", 2.0),
                                                                  SynthMethod("beta", 1.0))
                 ) -> RunStore:
    return make_store(path, methods, image_datasets=("synth-img",), video_datasets=("synth-vid",),
                      seeds=(0, 1), classes=2, n_images=40, n_videos=2, frames=60)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return _small_store(tmp_path_factory.mktemp("paths") / "store")


# -- the path helpers ------------------------------------------------------------------------


def test_job_ids_and_names() -> None:
    assert is_job_id("0123456789abcdef0123") and validate_job_id("0123456789abcdef0123")
    for bad in ("../../x", "0123456789ABCDEF0123", "0123456789abcdef012", "0123456789abcdef01234",
                "0123456789abcdef012/", "", None, 12345678901234567890):
        assert not is_job_id(bad)
        with pytest.raises(UnsafePathError, match="20 lowercase hex"):
            validate_job_id(bad)
    assert check_name("ocsvm-nu_2.0") == "ocsvm-nu_2.0"
    for bad in ("../../../x", "..", ".hidden", "a/b", "a\\b", "-rf", "", "x" * 129, "a\x00b"):
        with pytest.raises(UnsafePathError, match="cannot be used as a file name"):
            check_name(bad, "sweep name")
    # slugs: plain, never a path, different names stay different
    assert safe_name("ped2") == "ped2"
    for s in ("../../../x", "..", "a/b", "a-b", "A", "a", ".x", "évil<script>"):
        out = safe_name(s)
        assert "/" not in out and not out.startswith((".", "-")) and out not in ("", "..")
    assert len({safe_name(s) for s in ("a/b", "a-b", "a b", "A-B")}) == 4


def test_inside(tmp_path: Path) -> None:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    assert inside(tmp_path / "root", tmp_path / "root" / "sub" / "x.html")
    with pytest.raises(UnsafePathError, match="outside"):
        inside(tmp_path / "root", tmp_path / "root" / "sub" / ".." / ".." / "x.html")
    os.symlink(tmp_path, tmp_path / "root" / "link")
    with pytest.raises(UnsafePathError, match="outside"):  # a link out of the root
        inside(tmp_path / "root", tmp_path / "root" / "link" / "x.html")


# -- finding 2: the board never deletes what it does not own --------------------------------


def test_board_out_dot_beside_a_store_and_data_deletes_nothing(
        tmp_path: Path, store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _small_store(work / "runs")  # the default store, where `occbench run` puts it
    (work / "data").mkdir()
    (work / "data" / "frames.bin").write_bytes(b"\x00" * 64)
    (work / "notes.txt").write_text("mine")
    before = _tree(work)
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, ["board", "--out", ".", "--bootstrap", "0"])
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), r.output
    assert "not an occbench site" in r.output and "choose a new or empty folder" in r.output
    assert _tree(work) == before
    # the same store into a new folder works, and its marker lists what it wrote
    r = CliRunner().invoke(app, ["board", "--out", "board", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    listed = json.loads((work / "board" / MARKER).read_text())["files"]
    assert "index.html" in listed and "leaderboard.md" in listed
    assert sorted(listed) == sorted(k for k in _tree(work / "board") if k not in (MARKER, LOCK))
    assert {k: v for k, v in _tree(work).items() if not k.startswith("board/")} == before


def test_rebuild_deletes_only_its_own_previous_output(tmp_path: Path) -> None:
    st = _small_store(tmp_path / "store", (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0),
                                           SynthMethod("gamma", 0.5)))
    out = tmp_path / "site"
    build_site(st, out, options=OPTS)
    first = _tree(out)
    gamma = [j for j in st.job_ids() if st.record(j)["job"]["method"] == "gamma"]
    assert all(f"runs/{j}.html" in first for j in gamma)
    # foreign files beside the pages, in the board's own folders too
    foreign = {"notes.txt": b"mine", "runs/keep.html": b"<p>mine</p>", "data/mine.csv": b"a\n1\n",
               "mydir/x.bin": b"\x01"}
    for rel, b in foreign.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b)
    for j in gamma:  # gamma's runs leave the store: their pages must go, nothing else
        st.set_aside(j)
    (out / ".occbench-staging-k1ll3d").mkdir()  # left by a build killed half-way
    (out / ".occbench-staging-k1ll3d" / "index.html").write_text("half")
    build_site(st, out, options=OPTS)
    after = _tree(out)
    assert all(after[k] == v for k, v in foreign.items())
    assert not any(f"runs/{j}.html" in after for j in gamma)
    assert "methods/gamma.html" in first and "methods/gamma.html" not in after
    listed = set(json.loads((out / MARKER).read_text())["files"])
    assert listed == set(after) - set(foreign) - {MARKER, LOCK}
    assert not list(out.glob(".occbench-staging-*"))


def test_foreign_file_in_the_way_is_an_error_and_changes_nothing(tmp_path: Path,
                                                                 store: RunStore) -> None:
    out = tmp_path / "site"
    build_site(store, out, options=OPTS)
    marker = json.loads((out / MARKER).read_text())
    # a page this build would write, but that the marker does not list: someone else's file
    marker["files"].remove("index.html")
    (out / MARKER).write_text(json.dumps(marker))
    before = _tree(out)
    with pytest.raises(SiteError, match=r"index\.html exists and is not from a previous"):
        build_site(store, out, options=OPTS)
    assert _tree(out) == before


def test_two_builds_into_one_folder_do_not_mix(tmp_path: Path, store: RunStore) -> None:
    from filelock import FileLock

    out = tmp_path / "site"
    build_site(store, out, options=OPTS)
    before = _tree(out)
    with FileLock(str(out / LOCK)), pytest.raises(SiteError, match="another `occbench board`"):
        build_site(store, out, options=OPTS)
    assert _tree(out) == before


def test_marker_cannot_make_the_board_delete_outside(tmp_path: Path, store: RunStore) -> None:
    out = tmp_path / "site"
    build_site(store, out, options=OPTS)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    marker = json.loads((out / MARKER).read_text())
    marker["files"].append("../victim.txt")
    (out / MARKER).write_text(json.dumps(marker))
    with pytest.raises(SiteError, match="not a path inside the site"):
        build_site(store, out, options=OPTS)
    assert victim.read_text() == "keep"
    (out / MARKER).write_text("occbench leaderboard site; rebuilt by `occbench board`\n")
    with pytest.raises(SiteError, match="not a file list"):  # an older board's marker
        build_site(store, out, options=OPTS)


def test_no_site_tables_follow_the_same_rules(tmp_path: Path, store: RunStore) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "mine.csv").write_text("x\n")
    r = CliRunner().invoke(app, ["board", "--store", str(store.path), "--out",
                                 str(tmp_path / "t"), "--no-site", "--bootstrap", "0"])
    assert r.exit_code == 2 and "not an occbench site" in r.output
    r = CliRunner().invoke(app, ["board", "--store", str(store.path), "--out",
                                 str(tmp_path / "n"), "--no-site", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "n" / "leaderboard.md").exists() and (tmp_path / "n" / MARKER).exists()
    assert (tmp_path / "n" / "failures.csv").exists()



def test_tables_only_leave_an_earlier_site_in_place(tmp_path: Path, store: RunStore) -> None:
    """``--no-site`` into a folder holding a site writes the tables and deletes nothing: the
    site stays, and a later full build still keeps its unchanged pages."""
    out = tmp_path / "b"
    build_site(store, out, options=OPTS)
    pages = sorted(p.relative_to(out) for p in out.rglob("*.html"))
    before = {p: (out / p).read_bytes() for p in pages}
    r = CliRunner().invoke(app, ["board", "--store", str(store.path), "--out", str(out),
                                 "--no-site", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert (out / "leaderboard.md").is_file() and (out / "failures.csv").is_file()
    assert {p: (out / p).read_bytes() for p in pages} == before
    from occbench.leaderboard.site import build

    again = build(RunStore(store.path), out, options=OPTS)
    assert again.runs_built == 0 and again.runs_kept == len(store.job_ids())
    # the tables-only call's own files belong to the folder's builds: the site build, which
    # writes its tables under data/, removes them
    assert not (out / "failures.csv").exists() and (out / "data" / "failures.csv").is_file()


# -- finding 3: ids and names from records and sweeps never escape ---------------------------


def test_record_with_escaping_job_id_is_skipped_not_followed(tmp_path: Path) -> None:
    st = _small_store(tmp_path / "store")
    good = st.job_ids()[0]
    # a run folder whose record claims the id "../../planted"; the planted record outside the
    # store holds a secret the board must never read, and planted.html must never be written
    bad_dir = st.runs_dir / ("f" * 20)
    bad_dir.mkdir()
    for f in (st.runs_dir / good).iterdir():
        (bad_dir / f.name).write_bytes(f.read_bytes())
    rec = json.loads((bad_dir / "record.json").read_text())
    rec["job_id"] = "../../planted"
    rec["job"]["seed"] = 7  # its own slot: not hidden as a superseded copy of the good run
    (bad_dir / "record.json").write_text(json.dumps(rec))
    planted = tmp_path / "planted"
    planted.mkdir()
    secret = dict(rec, provenance={"git_sha": "PLANTED-SECRET"})
    (planted / "record.json").write_text(json.dumps(secret))
    (planted / "log.txt").write_text("PLANTED-SECRET")
    for f in ("scores.parquet", "raw.parquet"):
        if (bad_dir / f).exists():
            (planted / f).write_bytes((bad_dir / f).read_bytes())
    outside_before = {p for p in tmp_path.iterdir()}
    planted_before = _tree(planted)
    r = CliRunner().invoke(app, ["board", "--store", str(st.path), "--out",
                                 str(tmp_path / "site"), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert "../../planted" in r.output  # skipped, with one line naming it
    assert {p for p in tmp_path.iterdir()} == outside_before | {tmp_path / "site"}
    assert not (tmp_path / "planted.html").exists()
    assert _tree(planted) == planted_before
    for rel, body in _tree(tmp_path / "site").items():
        assert b"PLANTED-SECRET" not in body, rel
    assert (tmp_path / "site" / "runs" / f"{good}.html").exists()


def test_sweep_name_cannot_escape_the_store(tmp_path: Path) -> None:
    base: dict[str, Any] = {"method": "ocsvm", "dataset": "digits", "classes": ["0"],
                            "search": {"nu": {"grid": [0.1, 0.2]}}}
    with pytest.raises(SweepError, match=r"evil\.toml: `name` '\.\./\.\./\.\./x' cannot be"):
        sweep_from_dict({**base, "name": "../../../x"}, "evil.toml")
    with pytest.raises(SweepError, match="cannot be used as a file name"):
        sweep_from_dict({**base, "name": "a/b"}, "evil.toml")
    assert sweep_from_dict({**base, "name": "ocsvm-nu"}, "x.toml").name == "ocsvm-nu"
    # the default name (the file's stem) is slugged where it is not a plain name
    assert sweep_from_dict(base, "/s/my sweep.toml").name == safe_name("my sweep")
    assert sweep_from_dict(base, "/s/ocsvm_nu.toml").name == "ocsvm_nu"
    st = RunStore(tmp_path / "store").init()
    assert sweep_table_path(st.path, "ok") == st.path / "sweeps" / "ok.parquet"
    with pytest.raises(UnsafePathError):
        sweep_table_path(st.path, "../../../x")
    # a SweepSpec built in code with such a name stops before any trial runs
    sw = SweepSpec(name="../../../x", method="ocsvm", dataset="digits",
                   search={"nu": ("grid", [0.1])}, classes=["0"])

    def tune(**kw: Any) -> list[dict[str, Any]]:
        raise AssertionError("a trial ran")

    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(UnsafePathError):
        run_sweep(sw, st, runner=None, tune=tune)
    assert {p for p in tmp_path.rglob("*")} == before


# -- finding 10: failures shown ----------------------------------------------------------------


def _failure(st: RunStore, jid: str, label: str, dataset: str, cls: str | None, seed: int,
             status: str, etype: str, message: str) -> None:
    proto = st.record(st.job_ids()[0])["job"]["protocol"]
    st.write_failure({
        "schema": "occbench.run/1", "job_id": jid, "status": status,
        "job": {"job_id": jid, "method": "alpha", "label": label, "dataset": dataset,
                "normal_class": cls, "seed": seed, "protocol": proto,
                "modality": "image" if cls is not None else "video"},
        "metrics": None, "protocol": {"id": proto}, "provenance": {},
        "error": {"type": etype, "message": message, "traceback": "Traceback ...\n"},
        "log": "", "failed_at": "2026-12-01T00:00:00Z"})


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, Path]:
    st = _small_store(tmp_path_factory.mktemp("fail") / "store")
    msg = "bad <img src=x onerror=alert(1)> value | piped\nsecond line of the message"
    for i, (cls, seed) in enumerate([("0", 0), ("0", 1), ("1", 1)]):
        _failure(st, f"{i:020x}", EVIL, "synth-img", cls, seed, "failed", "ValueError", msg)
    _failure(st, f"{9:020x}", EVIL, "synth-img", "1", 0, "timeout", "TimeoutError",
             "over the 60 s time limit")
    _failure(st, f"{10:020x}", "beta", "synth-vid", None, 2, "out_of_memory", "MemoryError",
             "killed by the memory monitor")
    out = st.path.parent / "site"
    build_site(st, out, options=OPTS, warn=lambda m: None)
    return st, out


def test_board_lists_failures_per_entry_class_and_seed(failing: tuple[RunStore, Path]) -> None:
    _, out = failing
    index = (out / "index.html").read_text()
    assert "failed jobs not shown" not in index
    assert 'id="failures"' in index and "Failed jobs (5)" in index
    # plugin text escaped: the label and the message
    assert "<script>window" not in index and "<img src=x" not in index
    assert "evil&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in index
    assert "ValueError: bad &lt;img src=x onerror=alert(1)&gt; value | piped" in index
    assert "second line" not in index  # first line only; the rest stays in the record
    assert "class 0: seeds 0, 1" in index and "class 1: seed 1" in index
    assert "class 1: seed 0" in index and "TimeoutError: over the 60 s time limit" in index
    assert "seed 2" in index and "MemoryError: killed by the memory monitor" in index
    ds = (out / "datasets" / "synth-img.html").read_text()
    assert "Failed jobs (4)" in ds and "class 0: seeds 0, 1" in ds and "MemoryError" not in ds
    vid = (out / "datasets" / "synth-vid.html").read_text()
    assert "Failed jobs (1)" in vid and "out_of_memory" in vid
    md = (out / "leaderboard.md").read_text()
    assert "## Failed jobs (5)" in md
    row = next(ln for ln in md.splitlines() if "ValueError" in ln and "| 0 |" in ln)
    assert "evil&lt;script&gt;" in row and "| 0, 1 |" in row and "\\| piped" in row
    assert "<img" not in md and "<script>" not in md
    assert "| synth-vid |" in md and "| — | 2 | out_of_memory |" in md


def test_store_status_names_failures_by_label_class_and_seed(
        failing: tuple[RunStore, Path]) -> None:
    st, _ = failing
    r = CliRunner().invoke(app, ["store", "status", "--store", str(st.path)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert f"{len(st.job_ids())} finished runs, 5 failed jobs" in lines[0]
    hit = [ln for ln in lines if "class 0, seed 1" in ln]
    assert len(hit) == 1 and EVIL in hit[0] and "synth-img" in hit[0]
    assert "ValueError: bad <img src=x onerror=alert(1)> value | piped" in hit[0]
    assert any("beta × synth-vid, seed 2: MemoryError" in ln and "out_of_memory" in ln
               for ln in lines)

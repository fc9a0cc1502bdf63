"""The board at scale: run pages keyed by their inputs and kept when unchanged, built in
parallel processes with the same bytes, dataset run lists paginated, the store read once."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard import site as site_mod
from occbench.leaderboard.site import MANIFEST, SiteOptions, build
from occbench.leaderboard.synthetic import SynthMethod, derive_run, make_store

OPTS = SiteOptions(n_boot=30, timeline_points=300, jobs=1)


def _store(path: Path) -> RunStore:
    return make_store(path, (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0)),
                      image_datasets=("img",), video_datasets=("vid",), seeds=(0, 1),
                      classes=2, n_images=40, n_videos=2, frames=120)


def _tree(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def test_rebuild_after_one_new_run_builds_only_its_page(tmp_path: Path) -> None:
    st = _store(tmp_path / "store")
    out = tmp_path / "site"
    first = build(st, out, options=OPTS)
    n = len(st.job_ids())
    assert (first.runs_built, first.runs_kept) == (n, 0)
    manifest = json.loads((out / MANIFEST).read_text())["pages"]
    assert sorted(k for k in manifest if k.startswith("runs/")) == \
        sorted(f"runs/{j}.html" for j in st.job_ids())
    # dataset and method pages are keyed by their context too
    assert {"datasets/img.html", "datasets/vid.html", "methods/alpha.html"} <= set(manifest)
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.html")}

    again = build(RunStore(st.path), out, options=OPTS)  # nothing changed: nothing rebuilt
    assert (again.runs_built, again.runs_kept) == (0, n)

    video = next(j for j in st.job_ids() if st.run_record(j)["job"]["modality"] == "video")
    pages = {p: p.stat().st_mtime_ns for p in [*(out / "datasets").glob("*.html"),
                                                 *(out / "methods").glob("*.html")]}
    new = derive_run(st, video, {"seed": 7})
    third = build(RunStore(st.path), out, options=OPTS)
    assert (third.runs_built, third.runs_kept) == (1, n)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # untouched
    assert (out / "runs" / f"{new}.html").exists()
    # a new seed of a video entry: its dataset's page and its method's are made again (they
    # count its seeds), the other dataset's page and the other method's stay as they were
    redone = {p.relative_to(out).as_posix() for p, t in pages.items()
              if p.stat().st_mtime_ns != t}
    method = st.run_record(video)["job"]["method"]
    assert redone == {"datasets/vid.html", f"methods/{method}.html"}
    # the kept pages are exactly what a build from scratch writes
    fresh = tmp_path / "fresh"
    build(RunStore(st.path), fresh, options=OPTS)
    assert _tree(out) == _tree(fresh)


def test_changed_inputs_rebuild_and_gone_runs_lose_their_page(tmp_path: Path) -> None:
    st = _store(tmp_path / "store")
    out = tmp_path / "site"
    build(st, out, options=OPTS)
    (out / "runs" / "notes.txt").write_text("mine")  # not ours: never deleted
    gone = st.job_ids()[0]
    assert st.set_aside(gone)
    # other options change every page (here: fewer bootstrap replicates)
    r = build(RunStore(st.path), out, options=SiteOptions(n_boot=20, timeline_points=300,
                                                          jobs=1))
    assert r.runs_kept == 0 and r.runs_built == len(st.job_ids())
    assert not (out / "runs" / f"{gone}.html").exists()
    assert (out / "runs" / "notes.txt").read_text() == "mine"
    # a damaged manifest is not trusted: everything is built again
    (out / MANIFEST).write_text("{not json")
    r = build(RunStore(st.path), out, options=SiteOptions(n_boot=20, timeline_points=300,
                                                          jobs=1))
    assert r.runs_kept == 0


def test_parallel_build_writes_the_same_bytes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    st = _store(tmp_path / "store")
    from occbench.leaderboard import pages

    monkeypatch.setattr(pages, "_BATCH", 2)  # several tasks even for a small store
    par = build(st, tmp_path / "par", options=SiteOptions(n_boot=30, timeline_points=300,
                                                          jobs=2))
    assert par.runs_built == len(st.job_ids())
    build(RunStore(st.path), tmp_path / "ser", options=OPTS)
    cmp = filecmp.dircmp(tmp_path / "par", tmp_path / "ser")
    assert _tree(tmp_path / "par") == _tree(tmp_path / "ser"), cmp.diff_files


def test_dataset_pages_paginate_their_runs(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Past RUNS_PER_PAGE runs a dataset page lists its methods, each linking its own run-list
    pages of RUNS_PER_PAGE runs; every run is listed once, and a small dataset keeps its runs
    on its page."""
    import re

    st = make_store(tmp_path / "store", (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0)),
                    image_datasets=("img",), video_datasets=("vid",), seeds=(0, 1, 2),
                    classes=3, n_images=30, n_videos=2, frames=40)
    monkeypatch.setattr(site_mod, "RUNS_PER_PAGE", 7)
    build(st, tmp_path / "site", options=OPTS)
    d = tmp_path / "site" / "datasets"
    main = (d / "img.html").read_text()
    # 18 runs, 9 a method: alpha on img-runs-alpha.html (7) and img-runs-alpha-2.html (2)
    assert main.count('href="../runs/') == 0
    for m in ("alpha", "beta"):
        assert f'href="img-runs-{m}.html">1–7</a> · <a href="img-runs-{m}-2.html">8–9</a>' \
            in main
    p2 = (d / "img-runs-beta-2.html").read_text()
    assert p2.count('href="../runs/') == 2 and 'href="img-runs-beta.html">1–7</a>' in p2
    assert "Runs of" in p2 and "of 9</h1>" in p2 and 'href="img.html#run-list"' in p2
    listed: list[str] = []
    for f in sorted(d.glob("img-runs-*.html")):
        listed += re.findall(r'runs/([0-9a-f]{20})\.html', f.read_text())
    img_runs = [j for j in st.job_ids() if st.run_record(j)["job"]["dataset"] == "img"]
    assert sorted(listed) == sorted(img_runs)  # each once
    # 6 video runs: under the page size, listed on the dataset page itself
    vid = (d / "vid.html").read_text()
    assert vid.count('href="../runs/') == 6 and not list(d.glob("vid-runs-*.html"))
    for f in d.glob("*.html"):  # element ids are unique on every page (scripts look them up)
        ids = re.findall(r'\sid="([^"]+)"', f.read_text())
        assert len(ids) == len(set(ids)), (f.name, sorted(ids))


def test_a_rebuild_reads_only_the_runs_that_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first build reads each run's record twice: the tables' one pass and its run page;
    a rebuild takes the rows of unchanged runs from the site's row
    cache, unread, and reads (and verifies) a new run, a run whose metrics file changed and a
    run whose record was damaged; the tables equal a build from scratch every time."""
    from occbench.leaderboard.site import RUNS_CACHE

    st = _store(tmp_path / "store")
    out = tmp_path / "site"
    calls: list[str] = []
    real = RunStore.run_record

    def counting(self: RunStore, job_id: str) -> dict:
        calls.append(job_id)
        return real(self, job_id)

    monkeypatch.setattr(RunStore, "run_record", counting)
    first = build(st, out, options=OPTS)
    ids = st.job_ids()
    assert sorted(calls) == sorted(ids * 2) and (out / RUNS_CACHE).is_file()
    calls.clear()
    again = build(RunStore(st.path), out, options=OPTS)
    assert (calls, again.runs_built) == ([], 0)

    new = derive_run(st, ids[0], {"seed": 7})
    touched = st.metrics_path(ids[1], str(st.run_record(ids[1])["job"]["protocol"]))
    touched.write_text(touched.read_text())  # same bytes, a new file: read again
    calls.clear()
    r = build(RunStore(st.path), out, options=OPTS)
    # the two rows read again, and their pages built again (each reads its record)
    assert sorted(calls) == sorted([new, new, ids[1], ids[1]]) and r.runs_built == 2
    fresh = build(RunStore(st.path), tmp_path / "fresh", options=OPTS)
    assert (out / "data" / "leaderboard.csv").read_bytes() == \
        (tmp_path / "fresh" / "data" / "leaderboard.csv").read_bytes()
    pd_runs = r.analysis.runs if r.analysis is not None else None
    assert pd_runs is not None and fresh.analysis is not None
    assert pd_runs.equals(fresh.analysis.runs)

    bad = st.runs_dir / ids[2] / "record.json"
    bad.write_text(bad.read_text().replace('"seed"', '"seeD"', 1))  # damaged: left out
    calls.clear()
    warned: list[str] = []
    r = build(RunStore(st.path, on_bad=lambda b: warned.append(b.line())), out, options=OPTS)
    assert ids[2] not in set(r.analysis.runs["job_id"]) if r.analysis is not None else False
    assert any(ids[2] in w for w in warned)
    assert first.analysis is not None and len(r.analysis.runs) == len(first.analysis.runs)


def test_unchanged_dataset_run_list_pages_are_kept_and_changed_ones_rebuilt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run-list pages are keyed by their rows and links: an unchanged one is not rewritten; a
    new run rebuilds its own method's pages on its dataset only (each shows that method's
    total), other methods' and other datasets' stay as they were; all equal a build from
    scratch."""
    st = make_store(tmp_path / "store", (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0)),
                    image_datasets=("img", "other"), video_datasets=(), seeds=(0, 1, 2),
                    classes=3, n_images=30)
    monkeypatch.setattr(site_mod, "RUNS_PER_PAGE", 7)
    out = tmp_path / "site"
    build(st, out, options=OPTS)
    pages = sorted((out / "datasets").glob("*-runs-*.html"))
    assert [p.name for p in pages] == [
        f"{d}-runs-{m}{n}.html" for d in ("img", "other") for m in ("alpha", "beta")
        for n in ("-2", "")]

    def state() -> dict[str, tuple[int, bytes]]:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in pages}

    before = state()
    build(RunStore(st.path), out, options=OPTS)  # nothing changed: the files are not rewritten
    assert state() == before
    new = derive_run(st, next(j for j in st.job_ids()
                              if st.run_record(j)["job"]["dataset"] == "img"
                              and st.run_record(j)["job"]["method"] == "alpha"), {"seed": 9})
    build(RunStore(st.path), out, options=OPTS)
    after = state()
    assert any(new in (out / "datasets" / n).read_text()
               for n in ("img-runs-alpha.html", "img-runs-alpha-2.html"))
    changed = sorted(n for n in after if after[n] != before[n])
    assert changed == ["img-runs-alpha-2.html", "img-runs-alpha.html"]
    fresh = tmp_path / "fresh"
    build(RunStore(st.path), fresh, options=OPTS)
    for p in pages:
        assert p.read_bytes() == (fresh / "datasets" / p.name).read_bytes()


def test_run_pages_depend_only_on_the_templates_they_are_made_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed overview template rebuilds no run page; a changed run-page template (or one
    it uses) rebuilds every run page; either way the site equals a fresh build."""
    import shutil

    from occbench.leaderboard import pages

    tpl = tmp_path / "templates"
    shutil.copytree(pages._templates_dir(), tpl)
    monkeypatch.setattr(pages, "_templates_dir", lambda: tpl)
    pages.code_fingerprint.cache_clear()
    assert pages._templates_used("run.html") == ["_links.html", "base.html", "run.html"]
    st = _store(tmp_path / "store")
    out = tmp_path / "site"
    n = build(st, out, options=OPTS).runs_built

    def edit(name: str, marker: str) -> None:
        p = tpl / name
        text, block = p.read_text(), "{% block content %}"
        # inside a child template's block (its text outside blocks is not rendered)
        p.write_text(text.replace(block, f"{block}<!-- {marker} -->", 1)
                     if block in text and "{% extends" in text else text + f"<!-- {marker} -->\n")
        pages.code_fingerprint.cache_clear()

    edit("index.html", "overview changed")
    b = build(RunStore(st.path), out, options=OPTS)
    assert (b.runs_built, b.runs_kept) == (0, n)
    assert "overview changed" in (out / "index.html").read_text()
    for name in ("base.html", "_links.html", "run.html"):  # each used by run pages
        edit(name, f"{name} changed")
        b = build(RunStore(st.path), out, options=OPTS)
        assert (b.runs_built, b.runs_kept) == (n, 0), name
        page = next((out / "runs").glob("*.html")).read_text()
        assert f"{name} changed" in page or name == "_links.html"
    fresh = tmp_path / "fresh"
    build(RunStore(st.path), fresh, options=OPTS)
    assert _tree(out) == _tree(fresh)
    pages.code_fingerprint.cache_clear()

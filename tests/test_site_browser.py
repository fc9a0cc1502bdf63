"""The built site opened in headless Chromium, as a reader would: no console errors, tables
sort on click, plots render. Skipped when no Chromium is installed.

Set ``OCCBENCH_SCREENSHOTS=/some/dir`` to keep the screenshots (they go to a temporary folder
otherwise, never into the repository).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard.browser import Browser, find_chromium
from occbench.leaderboard.site import SiteOptions, build_site, slug
from occbench.leaderboard.synthetic import SynthMethod, make_store

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (apt-get install -y chromium)")

EVIL = "evil<script>window.__pwned = 1</script>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    make_store(base / "store", (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0),
                                SynthMethod(EVIL, 0.5, 0.0)),
               image_datasets=("synth-img",), video_datasets=("synth-vid",), seeds=(0, 1, 2),
               classes=3, n_images=100, n_videos=3, frames=600)
    st = RunStore(base / "store")
    proto = st.record(st.job_ids()[0])["job"]["protocol"]
    for i, (cls, seed) in enumerate([("0", 0), ("0", 1), ("2", 1)]):  # failures to list
        st.write_failure({
            "job_id": f"{i:020x}", "status": "failed", "error": {
                "type": "ValueError", "message": '<img src=x onerror="window.__pwned = 2">'},
            "job": {"method": EVIL, "label": EVIL, "dataset": "synth-img", "normal_class": cls,
                    "seed": seed, "protocol": proto}})
    build_site(base / "store", base / "site", options=SiteOptions(n_boot=200))
    return base / "site"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = os.environ.get("OCCBENCH_SCREENSHOTS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        return Path(d)
    return tmp_path_factory.mktemp("shots")


def _video_run(site: Path) -> Path:
    return next(p for p in sorted((site / "runs").glob("*.html"))
                if 'id="timeline"' in p.read_text())


def test_overview_renders_without_errors(site: Path, browser: Browser, shots: Path) -> None:
    page = browser.open(site / "index.html")
    assert page.errors == []
    assert page.eval("document.querySelectorAll('#cd-diagram svg.main-svg').length") >= 1
    assert page.eval("document.querySelectorAll('.plot-container').length") >= 1
    cells = page.eval("document.querySelectorAll('#overview-matrix tbody td.num').length")
    assert cells == 2 * 3
    png = page.screenshot(shots / "overview.png")
    assert png.stat().st_size > 20_000
    page.close()


def test_dataset_table_sorts_on_click(site: Path, browser: Browser, shots: Path) -> None:
    page = browser.open(site / "datasets" / "synth-img.html")
    assert page.errors == []
    assert page.eval("document.querySelectorAll('#seed-spread-0 svg.main-svg').length") >= 1
    col = """(() => {
      const t = document.getElementById('runs');
      const i = [...t.tHead.rows[0].cells].findIndex(th => th.textContent.trim() === 'AUC %');
      return [...t.tBodies[0].rows].map(r => Number(r.cells[i].dataset.v));
    })()"""
    click = """(() => {
      const t = document.getElementById('runs');
      [...t.tHead.rows[0].cells].find(th => th.textContent.trim() === 'AUC %').click();
    })()"""
    before = page.eval(col)
    page.eval(click)
    desc = page.eval(col)
    assert desc == sorted(before, reverse=True) and desc != before
    page.eval(click)
    assert page.eval(col) == sorted(before)
    page.screenshot(shots / "dataset.png")
    page.close()


def test_video_run_page_plots(site: Path, browser: Browser, shots: Path) -> None:
    page = browser.open(_video_run(site))
    assert page.errors == []
    assert page.eval("document.querySelectorAll('#timeline svg.main-svg').length") >= 1
    assert page.eval("document.querySelectorAll('#roc svg.main-svg').length") >= 1
    # ground-truth spans are drawn as shapes; the menu switches to another video
    assert page.eval("document.querySelectorAll('#timeline .shapelayer path').length") >= 1
    page.screenshot(shots / "video-run.png")
    info = page.eval("""(async () => {
      const gd = document.getElementById('timeline');
      const btn = gd.layout.updatemenus[0].buttons[1];
      await Plotly.update(gd, btn.args[0], btn.args[1]);
      return JSON.stringify({vis: gd.data.map(d => d.visible), title: gd.layout.title.text});
    })()""")
    got = json.loads(info)
    assert got["vis"] == [False, True, False] and "video_01" in got["title"]
    # the series arrive as typed arrays (base64): plotly.js decodes them into every point, and
    # draws the line through them (600 frames of the shown video, under the 2,000 a video may
    # show; the ROC keeps at most 400)
    pts = json.loads(page.eval("""JSON.stringify((() => {
      const tl = document.getElementById('timeline'), roc = document.getElementById('roc');
      const tr = tl._fullData.find(d => d.visible === true), y = tr.y;
      return {n: y.length, gaps: Array.from(y).filter(v => !Number.isFinite(v)).length,
              x_last: tr.x[y.length - 1], roc: roc._fullData[0].x.length,
              roc_end: [roc._fullData[0].x[roc._fullData[0].x.length - 1],
                        roc._fullData[0].y[roc._fullData[0].y.length - 1]],
              drawn: document.querySelector('#roc path.js-line').getAttribute('d').length};
    })())"""))
    assert pts["n"] == 600 and pts["gaps"] == 0 and pts["x_last"] == 599
    assert 100 < pts["roc"] <= 400 and pts["roc_end"] == [100, 100] and pts["drawn"] > 1000
    page.close()


def test_plugin_markup_is_inert(site: Path, browser: Browser) -> None:
    page = browser.open(site / "methods" / f"{slug(EVIL)}.html")
    assert page.errors == []
    assert page.eval("window.__pwned === undefined")
    assert page.eval("document.querySelector('h1').textContent") == f"Method {EVIL}"
    page.close()


def test_failures_are_listed_and_inert(site: Path, browser: Browser, shots: Path) -> None:
    page = browser.open(site / "index.html")
    assert page.errors == []
    assert page.eval("window.__pwned === undefined")
    assert page.eval("document.querySelectorAll('#failures-table tbody tr').length") == 1
    where = page.eval("document.querySelector('#failures-table tbody tr').cells[4].innerText")
    assert where.split("\n") == ["class 0: seeds 0, 1", "class 2: seed 1"]
    assert page.eval("document.querySelector('#failures-table td.reason').textContent") == \
        'ValueError: <img src=x onerror="window.__pwned = 2">'
    page.eval("document.getElementById('failures').scrollIntoView()")
    page.screenshot(shots / "failures.png")
    page.close()


def test_error_detection_itself(tmp_path: Path, browser: Browser) -> None:
    # the checks above are only worth something if a broken page is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<script src="missing.js"></script><script>console.error("boom");'
                   "notDefined();</script>")
    page = browser.open(bad)
    errs = " | ".join(page.errors)
    assert "missing.js" in errs and "boom" in errs and "notDefined" in errs
    page.close()

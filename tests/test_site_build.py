"""The static site: pages, relative links, escaping, determinism, size, CLI and --serve."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from occbench.harness.api import Context, Data, Method, ScoreOutput
from occbench.harness.cli.board import make_server
from occbench.harness.cli.main import app
from occbench.harness.registry import methods
from occbench.leaderboard.site import SiteError, SiteOptions, build_site, slug
from occbench.leaderboard.synthetic import SynthMethod, make_store
from typer.testing import CliRunner

EVIL = 'evil<script>alert("m")</script>'
EVIL_DS = "ds<img src=x onerror=alert(1)>"


class EvilMethod(Method):
    """A plugin whose every text field tries to inject markup."""

    name: ClassVar[str] = EVIL
    description: ClassVar[str] = "desc <script>alert('d')</script> & more"

    def __init__(self, knob: str = "<b>bold</b>") -> None:
        self.knob = knob

    def fit(self, train: Data, context: Context) -> Method:
        return self

    def score(self, test: Data, context: Context) -> ScoreOutput:
        return np.zeros(len(test))


@pytest.fixture(scope="module")
def evil_registered() -> Iterator[None]:
    methods.register(EvilMethod)
    yield
    methods.unregister(EVIL)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, evil_registered: None) -> Path:
    p = tmp_path_factory.mktemp("site") / "store"
    make_store(p, (SynthMethod("alpha", 2.0), SynthMethod("beta", 1.0),
                   SynthMethod(EVIL, 0.5, 0.0)),
               image_datasets=("synth-img", EVIL_DS), video_datasets=("synth-vid",),
               seeds=(0, 1), classes=3, n_images=100, n_videos=3, frames=2500, border=7)
    sweeps = p / "sweeps"
    sweeps.mkdir()
    rng = np.random.default_rng(0)
    # the shape `occbench sweep` writes: param_* columns, val_auc, test_auc, best, ...
    pd.DataFrame({"sweep": "alpha-synth-img", "method": "alpha", "dataset": "synth-img",
                  "param_lr": 10 ** rng.uniform(-4, -1, 12), "param_nu": rng.random(12),
                  "val_auc": rng.random(12), "test_auc": rng.random(12),
                  "best": [True] + [False] * 11, "selected_on_test": False,
                  "trial_error": None}).to_parquet(sweeps / "alpha-synth-img.parquet")
    (sweeps / "broken.parquet").write_text("not parquet")
    return p


@pytest.fixture(scope="module")
def site(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "site"
    build_site(store, out, options=SiteOptions(n_boot=200))
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_pages_exist(site: Path) -> None:
    assert (site / "index.html").exists() and (site / "sweeps.html").exists()
    assert (site / "datasets" / "synth-vid.html").exists()
    assert (site / "methods" / "alpha.html").exists()
    assert len(list((site / "runs").glob("*.html"))) == 3 * 2 * (3 + 3 + 1)
    assert (site / "static" / "plotly.min.js").stat().st_size > 1_000_000
    assert (site / "data" / "leaderboard.csv").exists()


def test_links_are_relative_and_resolve(site: Path) -> None:
    for page in _pages(site):
        html = page.read_text()
        for ref in re.findall(r'(?:href|src)="([^"]+)"', html):
            assert not ref.startswith(("http:", "https:", "//")), f"{page}: external {ref}"
            target = (page.parent / ref.split("#")[0]).resolve()
            assert target.exists(), f"{page.relative_to(site)} links to missing {ref}"
        # plotly's JS is one shared file, never inlined or fetched from a CDN
        assert html.count("plotly.min.js") == 1 and "cdn.plot.ly" not in html
        assert "fetch(" not in html


def test_plugin_text_is_escaped(site: Path) -> None:
    for page in _pages(site):
        html = page.read_text()
        assert "<script>alert" not in html, page
        assert "<img src=x" not in html and "<b>bold" not in html, page
    mpage = site / "methods" / f"{slug(EVIL)}.html"
    html = mpage.read_text()
    assert "evil&lt;script&gt;alert(&#34;m&#34;)&lt;/script&gt;" in html
    assert "desc &lt;script&gt;alert(&#39;d&#39;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # the default parameter, from the registry
    assert (site / "datasets" / f"{slug(EVIL_DS)}.html").exists()


def test_same_store_gives_byte_identical_site(store: Path, site: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_site(store, again, options=SiteOptions(n_boot=200))
    a = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    b = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    # rebuilding into the same folder replaces the old pages
    build_site(store, again, options=SiteOptions(n_boot=200))
    assert {p.relative_to(again) for p in again.rglob("*") if p.is_file()} == set(b)


def test_video_run_page_is_light_and_has_spans(site: Path) -> None:
    pages = [p for p in (site / "runs").glob("*.html") if 'id="timeline"' in p.read_text()]
    assert len(pages) == 3 * 2
    html = pages[0].read_text()
    # 3 videos × 2,500 frames are reduced to 2,000 points per video; spans shaded as rects
    assert len(html) < 120_000
    assert '"type":"rect"' in html and '"fillcolor":"rgba(214,39,40,0.18)"' in html
    assert "bootstrap over 3 videos" in html


def test_overview_and_dataset_content(site: Path) -> None:
    index = (site / "index.html").read_text()
    assert "Friedman test" in index and 'id="cd-diagram"' in index
    ds = (site / "datasets" / "synth-img.html").read_text()
    assert "Per class" in ds and "Wilcoxon" in ds and 'id="seed-spread-0"' in ds
    assert "alpha-synth-img" in ds  # links its sweep
    sw = (site / "sweeps.html").read_text()
    assert 'id="sweep-0-0"' in sw and 'id="sweep-0-1"' in sw and "param_lr" in sw
    assert '"type":"log"' in sw  # the learning rate spans 3 decades
    assert "could not read" in sw and "broken.parquet" in sw  # a bad file is reported, not fatal


def test_refuses_foreign_folder(store: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SiteError, match="not an occbench site"):
        build_site(store, tmp_path)
    assert (tmp_path / "mine.txt").exists()


def test_cli_board(store: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["board", "--store", str(store), "--out", str(tmp_path / "b"),
                                 "--no-site"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "leaderboard.md").exists()
    assert (tmp_path / "b" / "comparisons.csv").exists()
    assert not (tmp_path / "b" / "index.html").exists()
    r = CliRunner().invoke(app, ["board", "--store", str(store), "--out", str(tmp_path / "s"),
                                 "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "index.html").exists()
    assert (tmp_path / "s" / "leaderboard.csv").exists()
    r = CliRunner().invoke(app, ["board", "--store", str(tmp_path / "none"), "--out",
                                 str(tmp_path / "x")])
    assert r.exit_code != 0 and "not a run store" in r.output


def test_serve_binds_localhost(site: Path) -> None:
    httpd = make_server(site, 0)
    host, port = httpd.server_address[:2]
    assert host == "127.0.0.1"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as r:
            body: Any = r.read()
        assert r.status == 200 and b"occbench leaderboard" in body
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_overview_lists_many_methods_as_rows_best_first(tmp_path: Path) -> None:
    ms = [SynthMethod(f"m{i:02d}", 0.3 + 0.2 * i, 0.0) for i in range(10)]
    st = make_store(tmp_path / "store", ms, video_datasets=(), seeds=(0, 1), classes=2,
                    n_images=60)
    # one run chosen on test labels: on the dataset page, never a column or row of the overview
    from occbench.leaderboard.synthetic import derive_run

    derive_run(st, st.job_ids()[0], {"label": "peeked", "selected_on_test": True},
               set_aside_original=True)
    build_site(st, tmp_path / "site", options=SiteOptions(n_boot=50))
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Methods × datasets" in html and "Datasets × methods" not in html
    table = html[html.index('id="overview-matrix"'):html.index("</table>")]
    rows = re.findall(r'<tr><td><a href="methods/([^"]+)\.html"', table)
    assert sorted(rows) == [f"m{i:02d}" for i in range(10)]
    vals = [float(v) for v in re.findall(r'<td class="num[^"]*" data-v="([0-9.]+)"', table)]
    assert len(vals) == 10 and vals == sorted(vals, reverse=True)  # best first
    assert rows[0] == "m09" and rows[-1] == "m00"
    assert "peeked" not in table


def test_parameter_values_are_shown_as_written() -> None:
    from occbench.leaderboard.site import sig

    assert [sig(10.0), sig(1e-5), sig(0.000123456), sig("scale"), sig(float("nan"))] == \
        ["10", "1e-05", "0.0001235", "scale", "—"]


def test_long_series_are_typed_arrays_that_decode_to_the_values() -> None:
    """The timeline and ROC series go to plotly.js as base64 typed arrays: the bytes decode to
    the values (float32), NaN gaps included, and equal input gives equal bytes."""
    import base64

    from occbench.leaderboard.plots import typed

    y = np.array([0.5, np.nan, 1e-3, 12.35, -2.0])
    t = typed(y)
    assert t["dtype"] == "f4" and t == typed(y.copy())
    back = np.frombuffer(base64.b64decode(t["bdata"]), dtype="<f4")
    np.testing.assert_array_equal(back, y.astype(np.float32))
    x = typed(np.arange(3000), "int32")
    assert x["dtype"] == "i4"
    assert np.frombuffer(base64.b64decode(x["bdata"]), dtype="<i4").tolist() == \
        list(range(3000))

"""The committed reference store ``results/``: within its budget, verified, and the source of
the README's headline table (issue: the reference leaderboard)."""

from __future__ import annotations

from pathlib import Path

from occbench.harness.store.runstore import RunStore
from occbench.leaderboard.readme import headline, readme_block
from occbench.leaderboard.table import aggregate, runs_frame

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BUDGET = 8 * 2**20  # bytes: the working tree and data travel to a GPU machine in 64 MiB


def test_results_fit_the_budget() -> None:
    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert 0 < size <= BUDGET, f"results/ is {size / 2**20:.2f} MiB (budget 8 MiB)"
    # on disk too, in whole blocks (`du`): a thousand small files take more than they hold
    used = sum(p.stat().st_blocks * 512 for p in [RESULTS, *RESULTS.rglob("*")])
    assert used <= BUDGET, f"results/ takes {used / 2**20:.2f} MiB on disk (budget 8 MiB)"
    # derived metrics are not committed: readers compute them from the raw scores
    assert not (RESULTS / "metrics").exists() or not any((RESULTS / "metrics").rglob("*.json")), (
        "results/metrics/ holds metrics: merge with `occbench store merge ... --into results "
        "--compact --no-metrics`, or remove results/metrics/ (derived, git-ignored)")
    locks = RESULTS / "locks"  # at most the shared claims file, empty (and git-ignored)
    assert not locks.exists() or all(p.name == "claims" and p.stat().st_size == 0
                                     for p in locks.iterdir())


def test_results_verify_and_every_metric_rederives() -> None:
    st = RunStore(RESULTS)
    assert st.verify(recompute=True) == []
    ids = st.job_ids()
    assert len(ids) > 0
    # every run is scorable from what is committed (raw scores and labels) under its protocol
    for jid in ids:
        m = st.metrics(jid)
        assert m is not None and 0.0 <= float(m.get("auc", m.get("auc_micro"))) <= 1.0, jid


def test_the_board_has_the_reference_datasets() -> None:
    agg = aggregate(runs_frame(RunStore(RESULTS)))
    assert {"fashion-mnist", "digits", "ped2"} <= set(agg["dataset"])


def test_the_readme_headline_is_generated_from_results() -> None:
    assert readme_block(ROOT / "README.md") == headline(RESULTS), (
        "README.md's headline table is not what results/ generates: run "
        "`occbench board --store results --out board --readme README.md`")

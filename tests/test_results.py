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
    size = sum(p.stat().st_size for p in RESULTS.rglob("*") if p.is_file())
    assert 0 < size <= BUDGET, f"results/ is {size / 2**20:.2f} MiB (budget 8 MiB)"
    locks = RESULTS / "locks"  # at most the shared claims file, empty (and git-ignored)
    assert not locks.exists() or all(p.name == "claims" and p.stat().st_size == 0
                                     for p in locks.iterdir())


def test_results_verify_and_every_metric_rederives() -> None:
    st = RunStore(RESULTS)
    assert st.verify(recompute=True) == []
    assert len(st.job_ids()) > 0


def test_the_board_has_the_reference_datasets() -> None:
    agg = aggregate(runs_frame(RunStore(RESULTS)))
    assert {"fashion-mnist", "digits", "ped2"} <= set(agg["dataset"])


def test_the_readme_headline_is_generated_from_results() -> None:
    assert readme_block(ROOT / "README.md") == headline(RESULTS), (
        "README.md's headline table is not what results/ generates: run "
        "`occbench board --store results --out board --readme README.md`")

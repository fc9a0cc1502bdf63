"""Reproduced vs published Fashion-MNIST AUROC (ADACL's Table 1), from a run store.

    python benchmarks/fashion_mnist_table.py --store runs/fmnist [--dataset fashion-mnist] \
        [--spec benchmarks/fashion-mnist.toml ...]

Prints a Markdown table: per normal class, the published value (``leaderboard/published.csv``)
and ours (mean ± std over seeds, AUROC in %), and the mean over classes.

It also applies the Deep SVDD paper's OC-SVM protocol to the jobs of
``fashion-mnist-ocsvm-grid.toml``: per class, the setting with the best AUROC on a labelled,
stratified 10 % slice of the test set is chosen and its AUROC on the other 90 % is reported.
That row uses test labels to choose, so it is marked ``selected_on_test``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from occbench.harness import registry
from occbench.harness.run.spec import spec_job_ids
from occbench.harness.store.runstore import RunStore
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "leaderboard" / "published.csv"


def load_runs(store: RunStore, dataset: str) -> pd.DataFrame:
    """One row per finished run of ``dataset``: label, method, params, class, seed, auc, job_id."""
    rows = []
    for r in store.records():
        job = r["job"]
        if job["dataset"] != dataset or r.get("status") != "ok":
            continue
        rows.append({
            "label": job.get("label") or job["method"], "method": job["method"],
            "params": json.dumps(job["method_params"], sort_keys=True),
            "selected_on_test": bool(job.get("selected_on_test")),
            "normal_class": job["normal_class"], "seed": job["seed"],
            "auc": r["metrics"]["auc"], "job_id": r["job_id"],
            "wall_s": r.get("provenance", {}).get("wall_time_s"),
        })
    return pd.DataFrame(rows)


def deep_svdd_protocol(store: RunStore, runs: pd.DataFrame, name: str, prefix: str = "",
                       holdout: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Per class: the selected_on_test OC-SVM setting (label starting with ``prefix``) best on a
    stratified 10 % labelled test slice; its AUROC on the remaining 90 % (one row per class)."""
    grid = runs[runs.selected_on_test & (runs.method == "ocsvm")
                & runs["label"].str.startswith(prefix)]
    out = []
    for cls, g in grid.groupby("normal_class"):
        best: tuple[float, str, float] | None = None
        for _, row in g.iterrows():
            sc = store.scores(row.job_id)
            y, s = sc["label"].to_numpy(), sc["score"].to_numpy()
            idx = np.arange(len(y))
            hold, rest = train_test_split(idx, train_size=holdout, stratify=y, random_state=seed)
            a_hold = roc_auc_score(y[hold], s[hold])
            if best is None or a_hold > best[0]:
                best = (a_hold, row.label, roc_auc_score(y[rest], s[rest]))
        assert best is not None
        out.append({"label": name,
                    "normal_class": cls, "seed": 0, "auc": best[2], "chosen": best[1]})
    return pd.DataFrame(out)


def table(store_path: str, dataset: str = "fashion-mnist", specs: list[str] | None = None) -> str:
    store = RunStore(store_path)
    runs = load_runs(store, dataset)
    if specs:
        runs = runs[runs.job_id.isin(spec_job_ids(specs))]
    pub = pd.read_csv(PUBLISHED, dtype={"normal_class": str}, keep_default_na=False)
    pub = pub[(pub.dataset == dataset) & (pub.table == "Table 1")
              & pub.paper.str.startswith("ADACL")]
    # published.csv names classes by index; the runs by the dataset plugin's class names
    names = registry.datasets.get(dataset)().classes() or []
    pub = pub.assign(normal_class=[names[int(c)] if c.isdigit() and int(c) < len(names) else c
                                   for c in pub.normal_class])
    classes = names or sorted(runs.normal_class.unique())

    lines = ["| method | source | " + " | ".join(classes) + " | mean |",
             "|---|---|" + "---|" * (len(classes) + 1)]
    for m, g in pub.groupby("method", sort=False):
        vals = dict(zip(g.normal_class, g.value * 100, strict=True))
        cells = [f"{vals[c]:.1f}" for c in classes]
        lines.append(f"| {m} | published | " + " | ".join(cells) + f" | **{vals['mean']:.2f}** |")

    ours = runs[~runs.selected_on_test]
    sels = []
    if runs.selected_on_test.any():
        sels = [deep_svdd_protocol(store, runs, "ocsvm, Deep SVDD grid (selected_on_test)",
                                   "ocsvm-g2^"),
                deep_svdd_protocol(store, runs, "ocsvm, all settings (selected_on_test)")]
    for _, g in list(ours.groupby("label")) + [("sel", x) for x in sels if len(x)]:
        name = g["label"].iloc[0]
        per = g.groupby("normal_class")["auc"].agg(["mean", "std", "count"])
        cells = []
        for c in classes:
            if c not in per.index:
                cells.append("–")
                continue
            mu, sd, n = per.loc[c]
            cells.append(f"{100 * mu:.1f}" + (f" ± {100 * sd:.1f}" if n > 1 else ""))
        # mean over classes per seed (seeds that cover every class), then mean ± std over seeds
        complete = [s for s, gs in g.groupby("seed") if set(classes) <= set(gs.normal_class)]
        full = bool(complete)
        seeds = len(complete)
        by_seed = g[g.seed.isin(complete)].groupby("seed")["auc"].mean()
        mean = (f"**{100 * by_seed.mean():.2f}**" + (f" ± {100 * by_seed.std():.2f}"
                                                     if len(by_seed) > 1 else "")) if full else "–"
        lines.append(f"| {name} | ours ({seeds} seed{'s' if seeds != 1 else ''}) | "
                     + " | ".join(cells) + f" | {mean} |")
    for sel in sels:
        if len(sel):
            chosen = ", ".join(f"{r.normal_class}: {r.chosen}" for r in sel.itertuples())
            lines.append("")
            lines.append(f"{sel['label'].iloc[0]}, settings chosen on a 10 % labelled test "
                         f"slice: {chosen}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--spec", action="append", default=None,
                    help="keep only the jobs of this spec as it expands now (repeatable); "
                         "default: every run of the dataset in the store")
    args = ap.parse_args()
    print(table(args.store, args.dataset, args.spec))


if __name__ == "__main__":
    main()

"""The README's headline table, generated from a run store (never typed by hand).

``occbench board --store results --readme README.md`` rewrites the block between the markers
``<!-- occbench:headline:start -->`` and ``<!-- occbench:headline:end -->``; a test checks that
the committed README equals what ``results/`` generates.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from occbench.harness.store.runstore import RunStore
from occbench.leaderboard.published import load_published
from occbench.leaderboard.table import aggregate, display_table, markdown, runs_frame

START, END = "<!-- occbench:headline:start -->", "<!-- occbench:headline:end -->"


def _published(pub: pd.DataFrame, method: str, dataset: str, metric: str) -> float:
    """The paper's headline value for (method, dataset): its ``mean`` row, or the video one."""
    rows = pub[(pub["method"] == method) & (pub["dataset"] == dataset)
               & (pub["metric"] == metric) & pub["normal_class"].isin(["mean", ""])]
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def _pct(m: float, s: float | None = None) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "—"
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return f"{100 * m:.2f}"
    return f"{100 * m:.2f} ± {100 * s:.2f}"


def headline(store: RunStore | str | Path, published: str | Path | None = None) -> str:
    """Markdown: per dataset and entry, AUC and EER (mean ± std over seeds, %), seeds, the
    published AUC beside it, and whether the runs are verified or self-reported."""
    st = store if isinstance(store, RunStore) else RunStore(store)
    agg = aggregate(runs_frame(st))
    if agg.empty:
        return "_No runs in the store yet._"
    pub = load_published(published)
    agg = agg[~agg["selected_on_test"].astype(bool)]
    # the method column with its marks, as the board's table writes it
    shown = display_table(agg)["method"].tolist()
    rows = []
    for r, method in zip(agg.itertuples(index=False), shown, strict=True):
        metric = "auc" if r.modality == "image" else "auc_micro"
        rows.append({
            "dataset": r.dataset,
            "method": method,
            "protocol": r.protocol,
            "classes": int(r.classes) if r.modality == "image" else "—",
            "seeds": int(r.seeds),
            "AUC %": _pct(r.auc_mean, r.auc_std),
            "published AUC % (paper)": _pct(_published(pub, str(r.method), str(r.dataset), metric)),
            "EER %": _pct(r.eer_mean, r.eer_std),
            "runs": r.origin,
        })
    df = pd.DataFrame(rows)
    note = ("AUC: class-mean one-vs-rest AUROC for images, frame-level micro AUC for video; "
            "mean ± std over seeds (a seed counts once it covers every class). [unsealed]: "
            "at least one of the entry's runs ran outside the sandbox, or was made before runs "
            "recorded it (docs/plugins.md). [transductive]: an item's score changed when the "
            "rest of the test set changed; [unchecked]: some runs were made before runs were "
            "checked for that, so it is not known. Generated from the committed run store by "
            "`occbench board --store results --readme README.md`.")
    return markdown(df) + "\n\n" + note


def update_readme(readme: str | Path, store: RunStore | str | Path,
                  published: str | Path | None = None) -> bool:
    """Replace the marked block in ``readme``; returns whether the file changed. A README
    without the markers is an error naming them."""
    p = Path(readme)
    text = p.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{p}: no {START} … {END} block to fill; add the two markers where the "
                         "table goes")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{headline(store, published)}\n{END}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


def readme_block(readme: str | Path) -> str:
    text = Path(readme).read_text()
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")

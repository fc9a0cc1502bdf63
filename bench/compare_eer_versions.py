"""How far the retired EER (argmin |FPR - FNR| on scikit-learn's thinned ROC, protocols @1) was
from the full-ROC EER of the @2 protocols, for every run of a store (in EER points):

    python bench/compare_eer_versions.py STORE
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from occbench.harness.scoring.protocols import get_protocol
from occbench.harness.store.runstore import RunStore
from sklearn.metrics import roc_curve


def main(path: str) -> None:
    st = RunStore(path, on_bad=lambda b: None)
    rows = []
    for jid in st.job_ids():
        job = st.run_record(jid)["job"]
        pids = [job["protocol"]]
        if job["modality"] == "video":
            pids += [p for p in ("video-raw@2", "video-minmax@2") if p not in pids]
        for pid in pids:
            sc = st.scores(jid, pid).dropna(subset=["score"])
            y, s = sc["label"].to_numpy(), sc["score"].to_numpy()
            fpr, tpr, _ = roc_curve(y, s)
            i = int(np.argmin(np.abs(fpr - (1 - tpr))))
            old = (fpr[i] + 1 - tpr[i]) / 2
            new = get_protocol(pid).evaluate(st.raw(jid), st.labels(jid))["eer"]
            rows.append((job["dataset"], job.get("label") or job["method"], job["normal_class"],
                         job["seed"], pid, old, new))
    df = pd.DataFrame(rows, columns=["dataset", "method", "class", "seed", "protocol", "eer_v1",
                                     "eer_v2"])
    df["diff_points"] = 100 * (df["eer_v1"] - df["eer_v2"])
    g = df.groupby(["dataset", "protocol"])["diff_points"]
    print(pd.DataFrame({"runs": g.size(), "max |diff| (points)": g.apply(lambda x: x.abs().max()),
                        "mean diff": g.mean()}).round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1])

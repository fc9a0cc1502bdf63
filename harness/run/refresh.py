"""What ``occbench refresh`` would run, and why.

A job runs when its content hash (method, parameters and version; dataset, parameters, version
and content fingerprint; normal class; seed) is not in the store. A stored run whose metrics
under the job's protocol are missing or stale (the protocol or the metric code changed) is only
*rescored* from its raw scores, never rerun. To tell CI *why*, each such
job is compared with the stored runs of the same method, dataset, normal class and seed, and the
identity fields that differ are named (``method_version 1 → 2``); a job with no such neighbour
is ``new``, one with a recorded failure ``previously failed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from occbench.harness.run.spec import Job, canonical_json
from occbench.harness.scoring.protocols import get_protocol
from occbench.harness.store.runstore import RunStore

#: Identity fields that can change between two runs of the same method/dataset/class/seed.
_COMPARED = ("method_version", "method_params", "dataset_version", "dataset_params",
             "dataset_fingerprint", "fast", "selected_on_test", "auxiliary")


@dataclass
class RefreshPlan:
    """The spec's jobs split into those already stored and those to run (with reasons)."""

    up_to_date: list[Job] = field(default_factory=list)
    to_run: list[tuple[Job, str]] = field(default_factory=list)
    #: stored runs whose metrics under the job's protocol are missing or stale
    to_rescore: list[tuple[Job, str]] = field(default_factory=list)
    #: jobs to run that need a GPU this machine lacks (never attempted here), with why
    need_gpu: list[tuple[Job, str]] = field(default_factory=list)

    def stale(self) -> list[tuple[Job, str]]:
        """Jobs whose slot holds an older run (the board would show a stale result)."""
        return [(j, w) for j, w in [*self.to_run, *self.need_gpu]
                if w != "new" and not w.startswith("previously")]

    @property
    def jobs(self) -> list[Job]:
        return [j for j, _ in self.to_run]

    def reasons(self) -> dict[str, int]:
        """How many jobs run for each kind of reason (the first field named in each)."""
        out: dict[str, int] = {}
        for _, why in self.to_run:
            key = why.split(" ", 1)[0] if not why.startswith("previously") else "failed"
            out[key] = out.get(key, 0) + 1
        return out


def _key(d: Mapping[str, Any]) -> tuple[Any, ...]:
    return (d.get("method"), d.get("label") or d.get("method"), d.get("dataset"),
            d.get("normal_class"), d.get("seed"))


def _short(v: Any) -> str:
    s = canonical_json(v) if isinstance(v, dict | list) else str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _diff(key: str, old: Any, new: Any) -> list[str]:
    """``key old → new``; for parameter dicts one entry per changed parameter."""
    if canonical_json(old) == canonical_json(new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [f"{key}.{k} {_short(old.get(k, '(unset)'))} → {_short(new.get(k, '(unset)'))}"
                for k in sorted(set(old) | set(new))
                if canonical_json(old.get(k)) != canonical_json(new.get(k))]
    return [f"{key} {_short(old)} → {_short(new)}"]


def explain(job: Job, neighbours: Iterable[Mapping[str, Any]]) -> str:
    """Why ``job`` is not in the store, compared with stored jobs of the same key."""
    mine = job.to_dict()
    best: list[str] | None = None
    for other in neighbours:
        diffs = [d for k in _COMPARED for d in _diff(k, other.get(k), mine.get(k))]
        if diffs and (best is None or len(diffs) < len(best)):
            best = diffs
    return "; ".join(best) if best else "new"


def plan_refresh(jobs: Iterable[Job], store: RunStore, have_gpu: bool | None = None
                 ) -> RefreshPlan:
    """Split ``jobs`` into stored ones and ones to run, each with the reason it must run.
    Jobs marked ``requires_gpu`` go to ``need_gpu`` instead of ``to_run`` when this machine
    has no GPU (``have_gpu``; default: ask torch when such a job is missing)."""
    plan = RefreshPlan()
    index: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    failed = {f["job_id"] for f in store.failures()} if store.path.exists() else set()
    for rec in (store.records() if store.runs_dir.exists() else []):
        index.setdefault(_key(rec["job"]), []).append(rec["job"])
    for j in jobs:
        if store.has(j.job_id):
            rec = store.run_record(j.job_id)
            pid = get_protocol(j.protocol).id
            if store._stored_metrics(j.job_id, pid, rec) is None:
                plan.to_rescore.append((j, f"metrics under {pid} missing or stale"))
            else:
                plan.up_to_date.append(j)
        elif j.job_id in failed:
            plan.to_run.append((j, "previously failed"))
        else:
            plan.to_run.append((j, explain(j, index.get(_key(j.to_dict()), []))))
    if any(j.requires_gpu for j, _ in plan.to_run):
        from occbench.harness.run.spec import gpu_available

        if not (gpu_available() if have_gpu is None else have_gpu):
            plan.need_gpu = [(j, w) for j, w in plan.to_run if j.requires_gpu]
            plan.to_run = [(j, w) for j, w in plan.to_run if not j.requires_gpu]
    return plan


__all__ = ["RefreshPlan", "explain", "plan_refresh"]

"""Run the next unfinished jobs of a grid within a deadline; leave the new runs in a store.

Made for GPU slots of fixed length (15 minutes, at most 10 per command): every job of the specs
(in the order given; ``--seed-first`` puts every method's seed 0 before any seed 1) that is in
neither ``--store`` nor a ``--done`` store runs, one worker process for the whole queue, unless
its estimated time no longer fits before the deadline: such a job is not started (a later,
cheaper job may still be), and no job runs past the deadline. Estimates come from the ``--done``
and ``--store`` runs (``harness/run/deadline.py``: measured seconds per epoch of the same method and
parameters, else of the same dataset), else ``--overhead-s + epochs x --per-epoch-s``, else
``--default-s``; times ``--margin``. ``--group G`` fits up to G compatible jobs (seeds, and
variants with the same network and schedule) as one stacked computation.

    # on the GPU machine, a 15-minute slot: 8.5 minutes of jobs, the store comes back in $OUT
    python bench/ped2_gpu_run.py --spec benchmarks/reference/ped2-gpu.toml --data-root DATA \\
        --store $OUT/store --done results --deadline-s 510 --device cuda --group 3 \\
        --per-epoch-s PER_EPOCH --overhead-s 60     # from bench/bench_ae3d.py, until runs exist
    occbench store merge OUT/store --into results --no-metrics   # back here

Prints one line per finished job and a summary (``ran N``, ``not started: M``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from occbench.harness.run.deadline import CostModel, DeadlineRunner
from occbench.harness.run.driver import run_jobs
from occbench.harness.run.execute import JobOutput
from occbench.harness.run.runner import SerialRunner
from occbench.harness.run.spec import Job, expand, load_spec
from occbench.harness.store.runstore import RunStore


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--spec", action="append", required=True, help="spec TOML (repeatable)")
    ap.add_argument("--store", required=True, type=Path, help="where new runs are written")
    ap.add_argument("--done", action="append", default=[], type=Path,
                    help="stores whose runs count as finished (and give time estimates)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--deadline-s", type=float, required=True,
                    help="seconds from the start of this command")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--group", type=int, default=1, help="jobs fitted as one stacked unit")
    ap.add_argument("--seed-first", action="store_true",
                    help="order: every job of seed 0, then seed 1, ... (stable within a seed)")
    ap.add_argument("--per-epoch-s", type=float, default=None)
    ap.add_argument("--overhead-s", type=float, default=0.0)
    ap.add_argument("--default-s", type=float, default=600.0)
    ap.add_argument("--margin", type=float, default=1.2)
    ap.add_argument("--in-process", action="store_true", help="no worker process (tests)")
    a = ap.parse_args(argv)
    deadline = t_start + a.deadline_s

    jobs: list[Job] = []
    for s in a.spec:
        jobs += [j for j in expand(load_spec(s), a.data_root).jobs
                 if j.job_id not in {x.job_id for x in jobs}]
    if a.seed_first:
        jobs.sort(key=lambda j: j.seed)  # stable: the spec order within each seed
    store = RunStore(a.store).init()
    costs = CostModel(default_s=a.default_s, per_epoch_s=a.per_epoch_s,
                      overhead_s=a.overhead_s, margin=a.margin)
    done_ids: set[str] = set()
    for d in [*a.done, a.store]:
        st = RunStore(d)
        done_ids |= set(st.job_ids())
        costs.learn(st.records())
    todo = [j for j in jobs if j.job_id not in done_ids]
    print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already done, {len(todo)} to run; "
          f"deadline in {deadline - time.time():.0f} s", flush=True)

    def progress(event: str, job: Job, out: JobOutput | None) -> None:
        if event in ("ok", "failed") and out is not None:
            wall = out.provenance.get("wall_time_s")
            print(f"{event:6} {job.display} ({job.job_id}) wall {wall} s, "
                  f"{deadline - time.time():.0f} s left", flush=True)

    inner = SerialRunner(device=a.device, in_process=a.in_process)
    runner = DeadlineRunner(inner, deadline, costs, group=a.group)
    try:
        summary = run_jobs(todo, store, runner, a.data_root, progress)
    finally:
        runner.close()
    print(f"ran {summary.ran}: {summary.ok} ok, {summary.failed} failed; "
          f"not started: {len(runner.not_started)}", flush=True)
    for s in runner.not_started:
        print(f"  not started: {s.job.display} ({s.job.job_id}): estimate {s.estimate_s:.0f} s, "
              f"{max(s.left_s, 0):.0f} s left", flush=True)
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

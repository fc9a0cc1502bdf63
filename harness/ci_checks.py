"""Checks the leaderboard workflow runs (``python -m occbench.harness.ci_checks CMD``).

* ``touched-methods --base REF``: the registered method plugins whose module a change touches
  (one name per line), so CI runs the conformance kit on exactly those.
* ``immutable-results --base REF [--store results]``: committed runs never change. A change may
  add runs and labels (a new method version or new data is a new run id) and re-derive metrics,
  but a modified or deleted ``runs/`` or ``labels/`` file is refused, naming each.
* ``look-at-site DIR``: open the overview and every dataset page in headless Chromium and fail on
  any console error, uncaught exception or failed load.

Exit status: 0 good, 1 a check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: git {' '.join(args)}: {out.stderr.strip()} (fetch the base "
                         "branch: actions/checkout with fetch-depth: 0)")
    return [line for line in out.stdout.splitlines() if line.strip()]


def changed_files(base: str, filt: str = "ACMRD") -> list[str]:
    return _git("diff", f"--diff-filter={filt}", "--name-only", base, "--")


def touched_methods(base: str) -> list[str]:
    """Names of method entry points whose module file is among the changed files."""
    root = Path(_git("rev-parse", "--show-toplevel")[0]).resolve()
    changed = {(root / f).resolve() for f in changed_files(base, "ACMR")}
    names = []
    for ep in metadata.entry_points(group="occbench.methods"):
        mod = ep.value.split(":", 1)[0]
        try:
            spec = find_spec(mod)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin and Path(spec.origin).resolve() in changed:
            names.append(ep.name)
    return sorted(set(names))


def immutable_violations(base: str, store: str) -> list[str]:
    s = store.rstrip("/")
    return _git("diff", "--diff-filter=MD", "--name-status", base, "--", f"{s}/runs",
                f"{s}/labels")


def look_at_site(site: Path) -> list[str]:
    from occbench.leaderboard.browser import Browser

    pages = [site / "index.html", *sorted((site / "datasets").glob("*.html"))]
    problems = []
    with Browser() as b:
        for p in pages:
            if not p.exists():
                problems.append(f"{p}: missing")
                continue
            page = b.open(p)
            problems += [f"{p}: {e}" for e in page.errors]
            print(f"{p}: {'ok' if not page.errors else 'errors'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m occbench.harness.ci_checks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("touched-methods")
    t.add_argument("--base", required=True)
    i = sub.add_parser("immutable-results")
    i.add_argument("--base", required=True)
    i.add_argument("--store", default="results")
    s = sub.add_parser("look-at-site")
    s.add_argument("site", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "touched-methods":
        for n in touched_methods(a.base):
            print(n)
        return 0
    if a.cmd == "immutable-results":
        bad = immutable_violations(a.base, a.store)
        for line in bad:
            status, path = line.split("\t", 1)
            what = "changed" if status.startswith("M") else "deleted"
            print(f"error: {path}: a committed run file was {what}; runs are immutable — a new "
                  "method version or new data gives a new run id (add it with `occbench store "
                  "merge`)", file=sys.stderr)
        if not bad:
            print(f"committed runs in {a.store}/ unchanged since {a.base}")
        return 1 if bad else 0
    problems = look_at_site(a.site)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

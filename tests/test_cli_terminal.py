"""``occbench run quick`` in a real terminal (a pty): the live progress display as a user sees
it, read from the screen output, and the plain lines it prints instead when piped."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def occbench() -> list[str]:
    exe = Path(sys.executable).with_name("occbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "occbench.harness"]


def run_in_pty(cmd: list[str], cols: int = 160, rows: int = 40, timeout: float = 600
               ) -> tuple[int, str]:
    """Run ``cmd`` with its stdout/stderr on a pseudo-terminal of ``cols`` × ``rows``; return
    (exit status, everything written to the screen with ANSI codes removed, ``\\r`` kept)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(master)
    rc = proc.wait(timeout=30)
    return rc, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


@pytest.mark.slow
def test_run_quick_live_progress_in_a_terminal(tmp_path: Path) -> None:
    store = tmp_path / "quick"
    rc, screen = run_in_pty([*occbench(), "run", "quick", "--store", str(store), "--runner",
                             "serial"])
    assert rc == 0, screen[-3000:]
    # the live display redraws one line in place: frames separated by \r (or cursor moves)
    frames = [f for f in re.split(r"[\r\n]", screen) if f.strip().startswith("jobs")]
    assert len(frames) >= 3, screen[-3000:]
    done = [int(m.group(1)) for f in frames if (m := re.search(r"(\d+)/99", f))]
    assert done and done[-1] == 99 and done == sorted(done) and done[0] < 99
    last = frames[-1]
    assert "━" in last and "ETA" in last and "ok 99 · running 0 · failed 0 · queued 0" in last
    # some frame shows the run under way: a job running, others queued
    assert any(re.search(r"running 1 · failed 0 · queued [1-9]", f) for f in frames)
    # the terminal's width is used, so the final table is whole
    assert "AUC %" in screen and "toy-video" in screen and "…" not in screen
    assert "ran 99 jobs" in screen and "99 ok, 0 failed" in screen
    assert not any(ln.startswith("progress ") for ln in screen.splitlines())  # no log lines

    # a warm rerun in the terminal: nothing runs, no bar
    rc, screen = run_in_pty([*occbench(), "run", "quick", "--store", str(store)])
    assert rc == 0 and "ran 0 jobs" in screen and "99 already done" in screen


@pytest.mark.slow
def test_run_piped_prints_progress_lines(tmp_path: Path) -> None:
    p = subprocess.run([*occbench(), "run", "quick", "--store", str(tmp_path / "s"),
                        "--runner", "serial", "--no-board"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("progress ")]
    # a line at the start, then one per tenth of the jobs (9 jobs) or 5 s, and the end
    pct = [int(m.group(1)) for ln in lines if (m := re.search(r"\((\d+) %\)", ln))]
    assert pct[0] == 0 and pct[-1] == 100 and pct == sorted(pct)
    assert 11 <= len(lines) <= 99
    assert "━" not in p.stdout  # no bar drawn into a pipe


@pytest.mark.parametrize("args,says", [
    (["list", "bogus"], "'bogus' is not one of"),
    (["list", "method"], "'protocols'; did you mean 'methods'?"),
    (["board", "--nope"], "No such option: --nope"),
    (["run", "quick", "--max-concurrent", "x"], "'--max-concurrent'"),
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
])
def test_usage_errors_are_one_line_naming_the_help(args: list[str], says: str) -> None:
    """Click's own usage errors read like occbench's: one ``error:`` line, exit 2, naming the
    command's --help (click prints usage, a hint and the error on three lines)."""
    p = subprocess.run([sys.executable, "-m", "occbench.harness", *args], capture_output=True,
                       text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], p.stderr
    assert "--help` lists what it takes" in lines[0] and "Traceback" not in p.stderr
    assert "Value error" not in lines[0]  # the validation library's prefix is not shown


def test_a_bad_runner_is_refused_before_the_spec_or_store_is_touched(tmp_path: Path) -> None:
    store = tmp_path / "s"
    p = subprocess.run([sys.executable, "-m", "occbench.harness", "run", "quick", "--store",
                        str(store), "--runner", "rayy"], capture_output=True, text=True,
                       timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "unknown runner 'rayy'; did you mean 'ray'?" in lines[0], lines[0]
    assert p.stdout == "" and not store.exists()  # no "spec quick: 99 jobs", no store made


def test_progress_eta_is_paced_from_the_first_finished_job() -> None:
    """The first job carries the workers' and sandbox's start-up: the ETA waits for a second
    one and uses the pace since the first (a 35 s grid once showed an ETA of 1,188 s)."""
    from occbench.harness.cli.main import LineProgress
    from rich.console import Console

    p = LineProgress(Console(file=io.StringIO()), total=10)
    assert p.eta_s(0, 50.0) is None
    assert p.eta_s(1, 100.0) is None  # 100 s of start-up: no guess from it
    assert p.eta_s(3, 104.0) == 14.0  # 2 jobs in 4 s since the first, 7 to go
    assert p.eta_s(10, 120.0) == 0.0

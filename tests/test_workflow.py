"""The leaderboard workflow's shell steps, run here for real on a tiny spec (all but the
``uses:`` steps; installers are shimmed), so that its commands cannot rot; and its guards:
committed runs are immutable, a PR's code never runs with write permissions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboard.yml"
TINY = ('name = "tiny"\nseeds = [0]\n[[methods]]\nname = "ocsvm"\n'
        '[[datasets]]\nname = "digits"\nclasses = ["0"]\n')


def _wf() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_never_runs_a_pull_request_with_write_access() -> None:
    wf = _wf()
    on = wf.get(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    assert "pull_request_target" not in on and "pull_request" in on
    assert wf["permissions"] == {"contents": "read"}
    assert "secrets." not in WORKFLOW.read_text()
    deploy = wf["jobs"]["deploy"]
    assert deploy["if"] == "github.event_name != 'pull_request'"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def _run_steps(repo: Path, tmp: Path, event: str) -> dict[str, subprocess.CompletedProcess]:
    wf = _wf()
    shims = tmp / "shims"
    shims.mkdir(exist_ok=True)
    for name in ("pip", "sudo", "apt-get"):  # installs are the environment's business here
        (shims / name).write_text("#!/bin/sh\necho \"shim: $0 $*\"\n")
        (shims / name).chmod(0o755)
    gh_env = tmp / f"github_env_{event}"
    gh_env.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    for k, v in wf["env"].items():
        env[k] = (str(v).replace("${{ github.workspace }}", str(repo))
                  .replace("${{ vars.TORCH_INDEX_URL }}", ""))
    env.update(PATH=f"{shims}:{Path(sys.executable).parent}:{env['PATH']}",
               GITHUB_ENV=str(gh_env), RUNNER_TEMP=str(tmp / f"runner_{event}"),
               GITHUB_EVENT_NAME=event)
    Path(env["RUNNER_TEMP"]).mkdir(exist_ok=True)
    results = {}
    for step in wf["jobs"]["board"]["steps"]:
        if "run" not in step:
            assert "uses" in step
            continue
        cond = step.get("if")
        if cond:
            m = re.fullmatch(r"github\.event_name (==|!=) '(\w+)'", cond)
            assert m, f"unknown condition {cond!r}"
            if (event == m.group(2)) != (m.group(1) == "=="):
                continue
        # what the previous steps wrote to $GITHUB_ENV, as Actions does between steps
        for line in gh_env.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
        r = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=600)
        results[step["name"]] = r
        if r.returncode != 0:
            break
    return results


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with a tiny reference spec and its committed store (two commits)."""
    r = tmp_path_factory.mktemp("wfrepo")
    (r / "benchmarks").mkdir()
    (r / "benchmarks" / "reference.toml").write_text(TINY)
    _git(r, "init", "-q")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty",
         "-m", "base")
    out = subprocess.run([sys.executable, "-m", "occbench.harness", "run",
                          "benchmarks/reference.toml", "--store", "results", "--runner",
                          "serial"], cwd=r, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.rmtree(r / "results" / "locks", ignore_errors=True)
    _git(r, "add", "-A")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "runs")
    return r


@pytest.mark.parametrize("event", ["pull_request", "push"])
def test_every_run_step_of_the_workflow_works(repo: Path, tmp_path: Path, event: str) -> None:
    from occbench.leaderboard.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("no chromium: the site step opens the board in it")
    res = _run_steps(repo, tmp_path, event)
    for name, r in res.items():
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
    wanted = {"Install occbench", "Conformance kit on the plugins this change touches",
              "Committed runs are immutable and verify", "What is stale or missing",
              "Build the site"}
    assert wanted <= set(res)
    assert ("Run the missing CPU jobs (main only)" in res) == (event == "push")
    assert "0 to run" in res["What is stale or missing"].stdout
    assert (repo / "_site" / "index.html").exists()
    shutil.rmtree(repo / "_site")


def test_a_changed_committed_run_is_refused(repo: Path, tmp_path: Path) -> None:
    import shutil as sh

    clone = tmp_path / "clone"
    sh.copytree(repo, clone)
    run = next((clone / "results" / "runs").iterdir())
    (run / "log.txt").write_text("edited\n")
    _git(clone, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "edit a run")
    r = subprocess.run([sys.executable, "-m", "occbench.harness.ci_checks", "immutable-results",
                        "--base", "HEAD~1", "--store", "results"], cwd=clone,
                       capture_output=True, text=True)
    assert r.returncode == 1 and f"results/runs/{run.name}/log.txt" in r.stderr
    assert "immutable" in r.stderr
    # a method module changed in a PR is what the conformance step validates
    r = subprocess.run([sys.executable, "-m", "occbench.harness.ci_checks", "touched-methods",
                        "--base", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0

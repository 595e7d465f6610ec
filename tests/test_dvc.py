"""The DVC pipeline (dvc.yaml): run -> export -> report, re-running only what changed.

Runs the real `dvc` in a fresh `git clone` of the committed HEAD, as a user would after
cloning: dvc.yaml, .dvc/ and .dvcignore must be committed for it to pass. The default
study (ban_digits) is trained once, in the first `dvc repro`; the later ones train nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: dvc and the `study` console script
TARGET = "report@ban_digits"


def _env(clone: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: mlflow.db inside the clone
    # Byte-code written into study/__pycache__, as on a user's machine: .dvcignore must keep
    # it out of the hash of the run stage's `study/` dependency.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(clone),  # `study` imports the clone's code, the code DVC hashes
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),  # not /var/tmp/dvc
    )
    return env


def _repro(clone: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """dvc's output and the stages it ran, in order."""
    proc = subprocess.run(
        [str(BIN / "dvc"), "repro", TARGET],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout
    return proc.stdout, re.findall(r"Running stage '([^']+)'", proc.stdout)


def _set_analysis_alpha(protocol: Path, old: str, new: str) -> None:
    head, sep, analysis = protocol.read_text().partition("\n[analysis]\n")
    assert sep and analysis.count(f"alpha = {old}\n") == 1, "no [analysis] alpha to change"
    protocol.write_text(head + sep + analysis.replace(f"alpha = {old}\n", f"alpha = {new}\n"))


def test_repro_runs_the_chain_once_then_only_the_stages_whose_inputs_changed(
    tmp_path: Path,
) -> None:
    assert (BIN / "dvc").exists(), f"no dvc next to {sys.executable}: pip install -e '.[dev]'"
    assert shutil.which("git"), "git is needed to clone the project"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    assert (clone / "dvc.yaml").exists() and (clone / ".dvc").is_dir(), (
        "dvc.yaml and .dvc/ must be committed: the test runs on a clone of HEAD"
    )
    env = _env(clone, tmp_path)
    results = clone / "results" / "ban_digits"
    report = clone / "reports" / "ban_digits" / "report.md"

    out, ran = _repro(clone, env)
    assert ran == ["run@ban_digits", "export@ban_digits", TARGET], out
    assert report.exists(), out
    assert (results / "run.json").exists() and (results / "runs.csv").exists(), out

    def mtimes() -> dict[str, int]:
        paths = (results / "run.json", results / "runs.csv", report)
        return {p.name: p.stat().st_mtime_ns for p in paths}

    before = mtimes()
    out, ran = _repro(clone, env)
    assert ran == [], out
    assert "Data and pipelines are up to date" in out, out
    assert mtimes() == before, "an up-to-date repro rewrote an output"

    _set_analysis_alpha(clone / "protocols" / "ban_digits.toml", "0.05", "0.01")
    out, ran = _repro(clone, env)
    assert ran == [TARGET], out
    after = mtimes()
    assert after["run.json"] == before["run.json"] and after["runs.csv"] == before["runs.csv"]
    assert after["report.md"] != before["report.md"]

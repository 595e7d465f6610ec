"""The DVC pipeline (dvc.yaml): [tune ->] run -> export -> report, re-running only what
changed.

Runs the real `dvc` in a fresh `git clone` of the committed HEAD, as a user would after
cloning: dvc.yaml, .dvc/ and .dvcignore must be committed for it to pass. The default
study (ban_digits) is tuned and trained once, in the first `dvc repro`; the later ones
train nothing. The tuning test runs the working tree's dvc.yaml, with two tiny studies in
place of the project's, in a fresh DVC project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

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


def _repro(clone: Path, env: dict[str, str], *targets: str) -> tuple[str, list[str]]:
    """dvc's output and the stages it ran, in order."""
    proc = subprocess.run(
        [str(BIN / "dvc"), "repro", *(targets or (TARGET,))],
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
    assert ran == ["tune@ban_digits", "run@ban_digits", "export@ban_digits", TARGET], out
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


# -- tuning: a new tuning result re-runs the run stage --------------------------------------

TUNED_STUDY = """
[study]
name = "tiny"
seeds = 1

[data]
dataset = "digits"
val_size = 0.15
augmentation = "none"

[train]
epochs = 2
batch_size = 256
lr = 0.05
schedule = "cosine"
device = "cpu"

[teacher]
arch = "mlp"
kwargs = { hidden = [16] }

[[arms]]
name = "kd"
arch = "mlp"
kwargs = { hidden = [16] }
loss = { name = "kd", temperature = 4.0, alpha = "tuned" }

[tune]
arm = "kd"
alpha = { low = 0.0, high = 1.0 }
trials = 2
seeds = 1
sampler_seed = 0
pruner = "none"
"""

PLAIN_STUDY = (
    TUNED_STUDY[: TUNED_STUDY.index("[tune]")]
    .replace('name = "tiny"', 'name = "plain"')
    .replace('alpha = "tuned"', "alpha = 0.5")
)


def _tiny_pipeline(where: Path) -> None:
    """The project's dvc.yaml with its studies replaced by two tiny ones: "tiny" (tuned,
    its kd arm says alpha = "tuned") and "plain" (no [tune]), entered as the project enters
    a study with and one without [tune]."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = spec["stages"]
    assert {"tune", "run", "export", "report"} <= set(stages), "dvc.yaml has no tune stage"
    tuned_keys = set(stages["tune"]["foreach"])
    items = stages["run"]["foreach"]
    assert all(items[k]["tuned"] == f"results/{k}/tuned.json" for k in tuned_keys)
    untuned = {items[k]["tuned"] for k in items if k not in tuned_keys}
    assert len(untuned) == 1, "one stand-in for tuned.json in studies without [tune]"
    stages["tune"]["foreach"] = {"tiny": "protocols/tiny.toml"}
    studies = {
        "tiny": {"protocol": "protocols/tiny.toml", "tuned": "results/tiny/tuned.json"},
        "plain": {"protocol": "protocols/plain.toml", "tuned": untuned.pop()},
    }
    for name in ("run", "export", "report"):
        stages[name]["foreach"] = studies
    (where / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (where / "protocols").mkdir()
    (where / "protocols" / "tiny.toml").write_text(TUNED_STUDY)
    (where / "protocols" / "plain.toml").write_text(PLAIN_STUDY)
    shutil.copytree(REPO / "study", where / "study", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".dvcignore", where / ".dvcignore")


def _kd_alphas(where: Path) -> set[float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{where / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs(
        [exp.experiment_id], "tags.role = 'kd/gen1' and attributes.status = 'FINISHED'"
    )
    return {float(r.data.params["loss_params.alpha"]) for r in runs}


def test_a_new_tuning_result_reruns_the_run_stage(tmp_path: Path) -> None:
    where = tmp_path / "project"
    where.mkdir()
    _tiny_pipeline(where)
    env = _env(where, tmp_path)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=where, env=env, check=True)
    targets = ("run@tiny", "run@plain")
    tuned = where / "results" / "tiny" / "tuned.json"

    out, ran = _repro(where, env, *targets)
    assert sorted(ran) == ["run@plain", "run@tiny", "tune@tiny"], out
    assert ran.index("tune@tiny") < ran.index("run@tiny"), out
    first = json.loads(tuned.read_text())["best_params"]["alpha"]
    assert _kd_alphas(where) == {first}

    out, ran = _repro(where, env, *targets)
    assert ran == [], out

    protocol = where / "protocols" / "tiny.toml"
    protocol.write_text(protocol.read_text().replace("sampler_seed = 0", "sampler_seed = 7"))
    out, ran = _repro(where, env, *targets)
    assert ran == ["tune@tiny", "run@tiny"], out  # the study without [tune] stays as it was
    second = json.loads(tuned.read_text())["best_params"]["alpha"]
    assert second != first
    assert _kd_alphas(where) == {first, second}  # kd retrained with the new value

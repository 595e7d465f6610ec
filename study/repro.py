"""Reproducibility: deterministic mode and the environment snapshot every run carries.

What is bitwise reproducible: on the CPU, the same seed of the same role gives identical
weights and metrics run after run, and a run resumed from a checkpoint ends exactly as an
uninterrupted one, on one machine with the same torch build and thread count. On one GPU
in deterministic mode the same holds run after run. Across machines, CPU models (vector
instructions), thread counts, GPU models, CUDA/cuDNN and torch versions change the order
of floating-point reductions: expect differences in the last bits that training amplifies
into small metric differences. The environment snapshot records all of these.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from study import __version__

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "statsmodels",
    "pandas",
    "scikit-learn",
    "mlflow",
    "optuna",
    "pydantic",
    "seaborn",
)


def resolve_deterministic(flag: bool | None, device: Any) -> bool:
    """The protocol's setting, or the default: deterministic on the CPU, not on a GPU."""
    return flag if flag is not None else str(device).startswith("cpu")


@contextlib.contextmanager
def deterministic_mode(flag: bool | None, device: Any) -> Iterator[bool]:
    """Deterministic algorithms (and the cuDNN/cuBLAS settings they need) inside the block.

    Cost on a GPU: cuDNN's autotuner is off and some kernels (e.g. scatter-add backward)
    take slower deterministic paths; on the CPU it costs close to nothing.
    """
    enabled = resolve_deterministic(flag, device)
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible results (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield enabled
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic = previous[1]
        torch.backends.cudnn.benchmark = previous[2]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pip_freeze() -> list[str]:
    """Every installed distribution as name==version, sorted."""
    dists = {(d.metadata["Name"] or "?", d.version) for d in metadata.distributions()}
    return sorted(f"{name}=={version}" for name, version in dists)


def git_state(path: Path | None = None) -> dict[str, Any]:
    """The git commit of the package's source tree and whether it has uncommitted changes."""
    where = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}


def environment() -> dict[str, Any]:
    """Python, torch, CUDA, GPU, CPU, package versions and git state of this process."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "study_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
        **git_state(),
    }

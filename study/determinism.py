"""Reproducibility: deterministic mode and the environment snapshot every run carries.

What is bitwise reproducible: on the CPU, the same seed of the same role gives identical
weights and metrics run after run, and a run resumed from a checkpoint ends exactly as an
uninterrupted one, on one machine with the same torch build and thread count. On one GPU
in deterministic mode the same holds run after run. Across machines, CPU models (vector
instructions), thread counts, GPU models, CUDA/cuDNN and torch versions change the order
of floating-point reductions: expect differences in the last bits that training amplifies
into small metric differences. The environment snapshot records all of these.

Process-wide settings that must be in place before any CUDA work are made by
``configure_cuda_process``, which resolving a training device calls (the CLI sets the cuBLAS
workspace before every command): cuBLAS reads its workspace setting once, and fp32 is to
mean IEEE fp32, not TF32.
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

from study.errors import UserInputError
from study.version import __version__

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


CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")
"""The values of ``CUBLAS_WORKSPACE_CONFIG`` under which cuBLAS is deterministic (CUDA >= 10.2);
the first is what we set when the variable is unset."""


def configure_cuda_process() -> None:
    """Process-wide GPU settings; call at process start, before any CUDA work. Idempotent.

    - ``CUBLAS_WORKSPACE_CONFIG``: set to ``:4096:8`` when unset, so that deterministic mode
      works. cuBLAS (and PyTorch's check of it) read the variable once, at the first GEMM,
      usually long before a deterministic block is entered (teacher predictions, earlier
      roles), so setting it there is too late. A value set by the user is kept;
      ``deterministic_mode`` refuses values other than ``:4096:8`` and ``:16:8`` on a GPU.
    - TF32 off for cuDNN convolutions and cuBLAS matmuls: on Ampere and later GPUs PyTorch
      runs fp32 convolutions in TF32 by default (10-bit mantissa). Here ``precision = "fp32"``
      means IEEE fp32; the speed is in ``"bf16"``/``"fp16"`` autocast, not in TF32.

    Touches flags only: no CUDA context is created, so it is cheap on a CPU-only machine.
    """
    os.environ.setdefault(CUBLAS_WORKSPACE_VARIABLE, CUBLAS_DETERMINISTIC_WORKSPACES[0])
    # Legacy switch first, then the fp32_precision API that PyTorch >= 2.9 documents: the
    # legacy call also clears cuDNN's old allow_tf32 flag, which torch.backends.cudnn.flags(),
    # torch.export and inductor still read; with the new API alone the two disagree and those
    # readers raise "you have used a mix of the legacy and new APIs".
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def tf32_enabled() -> dict[str, bool]:
    """Whether cuDNN convolutions and cuBLAS matmuls may use TF32 now (on GPUs that have it).

    An op's ``fp32_precision`` of ``"none"`` inherits its backend's, which inherits the
    generic one; TF32 is used only where the value in force is ``"tf32"``.
    """

    def in_force(op_value: str) -> bool:
        cuda_all = torch.backends.cudnn.fp32_precision  # the ("cuda", "all") setting
        for value in (op_value, cuda_all, torch.backends.fp32_precision):
            if value != "none":
                return value == "tf32"
        return False

    return {
        "tf32_convolutions": in_force(torch.backends.cudnn.conv.fp32_precision),
        "tf32_matmul": in_force(torch.backends.cuda.matmul.fp32_precision),
    }


def check_cublas_workspace(device: Any) -> None:
    """Refuse deterministic mode on a GPU when ``CUBLAS_WORKSPACE_CONFIG`` cannot give it.

    Without this, PyTorch fails at the first GEMM with an error that does not say which
    setting of ours is involved. Unset counts as allowed: ``configure_cuda_process`` (or
    ``deterministic_mode``, late) sets it. Nothing to check on the CPU.
    """
    if not str(device).startswith("cuda"):
        return
    value = os.environ.get(CUBLAS_WORKSPACE_VARIABLE)
    if value is None or value in CUBLAS_DETERMINISTIC_WORKSPACES:
        return
    allowed = " or ".join(repr(v) for v in CUBLAS_DETERMINISTIC_WORKSPACES)
    raise UserInputError(
        f"environment variable {CUBLAS_WORKSPACE_VARIABLE}={value!r} makes cuBLAS "
        f"non-deterministic; deterministic mode on {device} needs {allowed} (unset it to get "
        f"{CUBLAS_DETERMINISTIC_WORKSPACES[0]!r}), or set deterministic = false in [train]",
        field="deterministic",
    )


def resolve_deterministic(flag: bool | None, device: Any) -> bool:
    """The protocol's setting, or the default: deterministic on the CPU, not on a GPU."""
    return flag if flag is not None else str(device).startswith("cpu")


@contextlib.contextmanager
def deterministic_mode(flag: bool | None, device: Any) -> Iterator[bool]:
    """Deterministic algorithms (and the cuDNN/cuBLAS settings they need) inside the block.

    Cost on a GPU: cuDNN's autotuner is off and some kernels (e.g. scatter-add backward)
    take slower deterministic paths; on the CPU it costs close to nothing. On a GPU,
    ``CUBLAS_WORKSPACE_CONFIG`` must be ``:4096:8`` or ``:16:8`` (``UserInputError`` otherwise)
    and should have been set at process start (``configure_cuda_process``).
    """
    enabled = resolve_deterministic(flag, device)
    if enabled:
        check_cublas_workspace(device)
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible results (CUDA >= 10.2). Effective
        # only if no GEMM ran yet in this process: configure_cuda_process sets it in time.
        os.environ.setdefault(CUBLAS_WORKSPACE_VARIABLE, CUBLAS_DETERMINISTIC_WORKSPACES[0])
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
    """Python, torch, CUDA, GPU, CPU, package versions and git state of this process, and the
    math settings a training runs with: whether fp32 convolutions/matmuls may use TF32, and
    the cuBLAS workspace setting (made first, by ``configure_cuda_process``, so that a run's
    snapshot says what its training did)."""
    configure_cuda_process()
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
        "cuda": torch.version.cuda,  # the version torch was built with
        "cuda_available": cuda,  # whether this machine could use it
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch_threads": torch.get_num_threads(),
        **tf32_enabled(),
        "cublas_workspace_config": os.environ.get(CUBLAS_WORKSPACE_VARIABLE),
        "packages": versions,
        **git_state(),
    }

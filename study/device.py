"""Which device a training runs on: resolved, checked against this machine, and the one a
submitted job will get. One place for the device, so that the CLI's check before any work,
the executor and a Slurm submission agree on what "auto" and "cuda:N" mean.
"""

from __future__ import annotations

import re

import torch

from study.determinism import configure_cuda_process
from study.errors import UserInputError
from study.protocol import Protocol


def resolve_device(spec: str) -> torch.device:
    """'auto' is the GPU when there is one, else the CPU. Also makes the process-wide
    settings a training needs (``determinism.configure_cuda_process``: fp32 means IEEE fp32)."""
    configure_cuda_process()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", spec)
    if match is None:
        raise UserInputError(f"unknown device {spec!r}; allowed: auto, cpu, cuda, cuda:N")
    if spec.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserInputError(
                f"device {spec!r} asked for, but this machine has no usable CUDA device; "
                "use auto or cpu"
            )
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise UserInputError(
                f"device {spec!r} asked for, but this machine has {count} CUDA device(s): "
                f"cuda:0 to cuda:{count - 1}"
            )
    return torch.device(spec)


def check_device(spec: str | None, protocol: Protocol | None = None) -> None:
    """The training device (``spec``, the ``--device`` option, else the protocol's) exists
    on this machine: refused before the tracker is touched, with where it was asked for."""
    if spec is None and protocol is None:
        return
    try:
        resolve_device(spec or protocol.train.device)
    except UserInputError as e:
        where = ("command line", "--device") if spec else (protocol.source, "train.device")
        raise e.located(source=where[0], field=where[1]) from None


def job_device(protocol: Protocol, device: str | None, *, local: bool) -> torch.device:
    """The device the submitted jobs will train on, as far as the submitting host can tell.

    "auto" resolves on the machine that runs the job, not on this one: a Slurm login node
    without a GPU must still plan GPU-sized packs for jobs that ask for GPUs.
    """
    spec = device or protocol.train.device
    if spec != "auto" or local:
        return resolve_device(spec)
    return torch.device("cuda" if protocol.execution.slurm.gpus_per_job > 0 else "cpu")


def cuda_index(device: torch.device) -> int:
    """A CUDA device's index; a bare "cuda" is the current device, which need not be 0."""
    return device.index if device.index is not None else torch.cuda.current_device()

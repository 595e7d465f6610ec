"""Scheduled execution: a study submitted as jobs through submitit (Slurm, or submitit's
local executor), one job per independent chain of a seed pack.

Each job is an ordinary worker of ``execute.run_study`` restricted to its seeds, so claims,
resume and failure handling are the same as in a local run; this module only cuts the plan
into jobs and starts them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from study.conditions import load_condition
from study.device import job_device
from study.execute import job_id, run_study
from study.pack import auto_pack_size
from study.paths import within
from study.plan import expand, tuned_values
from study.protocol import Protocol
from study.track import Tracker


def run_worker(
    protocol_path: str,
    tracking_uri: str,
    seeds: list[int],
    cwd: str,
    device: str | None = None,
    condition: str | None = None,
) -> dict[str, Any]:
    """One scheduled job: a worker that trains the chains of some seeds (all their roles)
    of the protocol (of its ``condition``, for a protocol of several)."""
    os.chdir(cwd)
    protocol = load_condition(protocol_path, condition)
    plan = expand(protocol, tuned=tuned_values(protocol))
    summary = run_study(protocol, Tracker(tracking_uri), seeds=seeds, device=device, plan=plan)
    return {
        "seeds": seeds,
        "trained": summary.trained,
        "reused": summary.reused,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "job_id": job_id(),
    }


def submit_study(
    protocol: Protocol,
    tracking_uri: str,
    *,
    local: bool = False,
    device: str | None = None,
    wait: bool = True,
) -> list[dict[str, Any]]:
    """Submit the plan through submitit: one job per independent chain of a seed pack.

    Each job is an ordinary worker restricted to its seeds (teacher -> generations ->
    ensembles of those seeds), so claims, resume and failure handling are the same as in
    a local run. ``local`` uses submitit's local executor (real subprocesses on this
    machine, the same code path as Slurm) for tests and for trying a setup out.
    """
    import submitit

    execution = protocol.execution
    slurm = execution.slurm
    folder = within(slurm.folder, protocol.study.name)
    if local:
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=slurm.time_min)
    else:
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        params: dict[str, Any] = {
            "timeout_min": slurm.time_min,
            "gpus_per_node": slurm.gpus_per_job,
            "cpus_per_task": slurm.cpus_per_job,
            "mem_gb": slurm.mem_gb,
            "name": f"study-{protocol.study.name}",
        }
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        if slurm.account:
            params["slurm_account"] = slurm.account
        executor.update_parameters(**params)
    seeds = protocol.seeds
    size = execution.pack
    if not isinstance(size, int):  # "auto": what the teacher's role packs to on its device
        teacher = expand(protocol).role("teacher")
        size = auto_pack_size(teacher, len(seeds), job_device(protocol, device, local=local))
    chunks = [seeds[i : i + size] for i in range(0, len(seeds), size)]
    cwd = str(Path.cwd())
    jobs = [
        executor.submit(
            run_worker,
            str(Path(protocol.source).resolve()),
            tracking_uri,
            c,
            cwd,
            device,
            protocol.condition,
        )
        for c in chunks
    ]
    if not wait:
        return [{"seeds": c, "job_id": j.job_id} for c, j in zip(chunks, jobs, strict=True)]
    return [j.result() for j in jobs]

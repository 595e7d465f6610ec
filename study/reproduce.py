"""`study reproduce RUN_ID`: re-train one tracked run from what the tracker logged.

The run's resolved protocol (an artifact), its role and seed (tags) and its teacher's
checkpoint (through ``teacher_run_id``) are all that is used: nothing from the working
directory but the data files, whose identity is checked against the run's. The new run
goes into a scratch experiment ``<study>-reproduce`` and the final metrics of both are
compared side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from study.analysis.stats import format_seeds
from study.determinism import environment, resolve_deterministic
from study.device import resolve_device
from study.engine import channels_last, evaluate_ensemble
from study.errors import UserInputError
from study.execute import load_study_data, model_of_run
from study.pack import packable
from study.plan import Plan, Role, expand
from study.protocol import Protocol
from study.track import FINAL_METRICS, Tracker
from study.train import train_role


@dataclass
class Reproduction:
    original_run_id: str
    new_run_id: str
    role: str
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # metric, original, reproduced
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return bool(self.rows) and all(r["original"] == r["reproduced"] for r in self.rows)


def _plan_of(run: dict[str, Any], protocol: Protocol) -> Plan:
    """The plan as it was trained: tuned loss parameters come from the run's own params."""
    tuned: dict[str, float] = {}
    for key, value in run["params"].items():
        if key.startswith("loss_params."):
            try:
                tuned[key.removeprefix("loss_params.")] = float(value)
            except ValueError:
                pass
    return expand(protocol, tuned=tuned or None)


def reproduce_run(run_id: str, tracker: Tracker, *, device: str | None = None) -> Reproduction:
    """Re-train (or re-evaluate, for an ensemble) one run and compare its final metrics.

    About 100 lines read top to bottom: check the run, rebuild its plan and data, find its
    teacher or members, retrain in a pack of the run's size, compare. Each step needs what
    the ones before it resolved; split up, the pieces would take most of it as arguments."""
    run = tracker.run_record(run_id)
    tags = run["tags"]
    if "fingerprint" not in tags or "role" not in tags:
        raise UserInputError(
            "this run is not a (role, seed) run of a study (no role/fingerprint tags)",
            source=f"run {run_id}",
        )
    text = tracker.read_artifact_text(run_id, "protocol/protocol.json")
    protocol = Protocol.model_validate_json(text).model_copy(
        update={"source": tags.get("protocol_file", "<logged protocol>")}
    )
    plan = _plan_of(run, protocol)
    role, seed = plan.role(tags["role"]), int(tags["seed"])
    data = load_study_data(protocol)
    result = Reproduction(run_id, "", role.key, seed)
    if data.identity != tags.get("data_identity"):
        result.notes.append(
            "the data read now differs from the data the run was trained on "
            f"(identity {data.identity[:12]} vs {str(tags.get('data_identity'))[:12]})"
        )
    dev = _device_for(device, tags.get("device"), role, result.notes)

    def model_of(dep_run_id: str, key: str) -> torch.nn.Module:
        state = tracker.load_checkpoint(dep_run_id)
        return model_of_run(plan.role(key), data, state, dev, dep_run_id)

    exp_id = tracker.experiment_id(f"{protocol.study.name}-reproduce")
    assert exp_id is not None
    new_tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    # the new run's tags describe the new run; what the original recorded stays beside
    pack = pack_of_the_run(tags, role, seed, list(plan.seeds))
    now = {
        "device": str(dev),
        "data_identity": data.identity,
        "pack_size": len(pack) if role.kind != "ensemble" else None,
        "deterministic": resolve_deterministic(role.train.deterministic, dev)
        if role.train
        else None,
    }
    for key, value in now.items():
        if key in tags and value is not None and str(value) != tags[key]:
            new_tags[f"original_{key}"] = tags[key]
        if value is not None:
            new_tags[key] = str(value)
    new_tags["reproduces"] = run_id
    new_id = tracker.start_run(
        exp_id,
        parent_id=None,
        name=f"reproduce {role.key}/seed{seed}",
        tags=new_tags,
        params=run["params"],
    )
    result.new_run_id = new_id
    tracker.log_files(new_id, {"environment/environment.json": json.dumps(environment())})
    try:
        if role.kind == "ensemble":
            member_ids = tags["members_run_ids"].split(",")
            members = [model_of(r, k) for r, k in zip(member_ids, role.members, strict=True)]
            teacher_id = _teacher_of_first_member(tracker, member_ids[0])
            teacher = model_of(teacher_id, "teacher") if teacher_id else None
            final = evaluate_ensemble(
                members, data, batch_size=protocol.train.eval_batch_size, teacher=teacher
            )
        else:
            teachers = None
            if role.teacher:
                teachers = {seed: model_of(tags["teacher_run_id"], role.teacher)}
            # Runs logged before `[execution] channels_last` existed trained NCHW: their
            # logged protocol lacks the field (it is then not among the fields set).
            execution = protocol.execution
            layout = "channels_last" in execution.model_fields_set and execution.channels_last
            if len(pack) > 1:
                result.notes.append(
                    f"re-trained in a pack of {len(pack)} as the run was (seed {seed} and "
                    f"filler seeds {format_seeds(pack[1:])}, whose results are discarded)"
                    + (
                        ""
                        if role.arch == "mlp"
                        else "; a convolutional seed's place in the "
                        "pack may round otherwise: expect float-rounding differences"
                    )
                )
                if teachers:  # the fillers distil from the same teacher: nothing of theirs is kept
                    teachers = dict.fromkeys(pack, teachers[seed])
            with channels_last(layout):
                trained = train_role(role, pack, data, teachers=teachers, device=dev)[0]
            final = trained.final
            tracker.log_checkpoint(new_id, trained.state_dict)
        tracker.log_metrics(new_id, final, step=role.train.epochs if role.train else 0)
        tracker.end_run(new_id)
    except BaseException:
        tracker.end_run(new_id, "FAILED")
        raise
    for name in FINAL_METRICS:
        if name in run["metrics"] or name in final:
            original, new = run["metrics"].get(name), final.get(name)
            result.rows.append({"metric": name, "original": original, "reproduced": new})
    return result


def pack_of_the_run(tags: dict[str, str], role: Role, seed: int, seeds: list[int]) -> list[int]:
    """The seeds to re-train a run with, ``seed`` first: the run's seed alone where it
    trained alone (the loop), else a pack of the run's size, the others filler seeds whose
    results are discarded. A BLAS may round a batched matrix product of one matrix
    otherwise than one of several (MKL on an AMD EPYC does: an MLP seed trains bit for bit
    alike in packs of 2, 5 or 20, whichever seeds share them, but not alone), so only a
    pack of the same size reproduces a packed run; it costs that pack's training."""
    try:
        size = int(tags.get("pack_size") or 1)
    except ValueError:
        size = 1
    if size <= 1 or not packable(role):
        return [seed]
    fillers = [s for s in seeds if s != seed][: size - 1]
    spare = max([*seeds, seed]) + 1
    while len(fillers) < size - 1:
        fillers.append(spare)
        spare += 1
    return [seed, *fillers]


def _device_for(
    given: str | None, recorded: str | None, role: Role, notes: list[str]
) -> torch.device:
    """``--device``, else the device the run was trained on, else (that device is not on
    this machine) the protocol's, with a note: a CPU run re-trained on a GPU, or the
    reverse, differs in float rounding, and the comparison says so."""
    if given is not None:
        return resolve_device(given)
    if recorded:
        try:
            return resolve_device(recorded)
        except UserInputError as e:
            fallback = role.train.device if role.train else "auto"
            dev = resolve_device(fallback)
            notes.append(
                f"the run was trained on {recorded}, which this machine lacks ({e.reason}); "
                f"re-trained on {dev} instead: expect float-rounding differences"
            )
            return dev
    return resolve_device(role.train.device if role.train else "auto")


def _teacher_of_first_member(tracker: Tracker, member_run_id: str) -> str | None:
    """The teacher run of an ensemble's seed: follow generation 1's teacher_run_id up."""
    tags = tracker.run_record(member_run_id)["tags"]
    while tags.get("role") != "teacher" and tags.get("teacher_run_id"):
        teacher_id = tags["teacher_run_id"]
        tags = tracker.run_record(teacher_id)["tags"]
        if tags.get("role") == "teacher":
            return teacher_id
    return None

"""Expansion of a protocol into roles and (role, seed) jobs, with their fingerprints.

A *role* is one model in the study: the teacher (generation 0), generation k of an arm
(k = 1..G, distilling from generation k-1 of the same arm, or from the teacher for k = 1),
or the ensemble of generations 1..k of an arm (k >= 2, evaluated, not trained).

Seed s of a role always pairs with seed s of the role it depends on: generation k of seed
s distils from generation k-1 of seed s. Comparisons are paired by seed for the same
reason: this is what makes the statistics strong with few seeds.

A fingerprint is a hash of everything that determines a (role, seed)'s result and of
nothing else: the resolved role config (architecture, kwargs, loss, its parameters, the
training recipe), the seed, the generation (it selects the random streams), the teacher's
fingerprint, the data identity (the data themselves and their split), the augmentation
of the training batches, and the package version. Names (study, arm, role) and the device
are not part of it; the name of a condition is (one of a protocol of several conditions:
two conditions are two sets of runs, tagged each with its condition).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from study.data import dataset_info
from study.errors import UserInputError
from study.losses import TUNED, resolve_loss_params
from study.models import resolve_model_kwargs
from study.protocol import (
    Protocol,
    TrainSection,
    TuneSection,
    resolved_arch,
    resolved_features,
)
from study.tuned import SEARCHABLE, answers_to, digest, read_tuned, tuned_path
from study.version import __version__

RoleKind = Literal["teacher", "student", "ensemble"]
TEACHER = "teacher"


@dataclass(frozen=True)
class Role:
    """One model of the study, trained (teacher, student) or evaluated (ensemble)."""

    key: str  # "teacher", "<arm>/gen<k>", "<arm>/ens<k>"
    kind: RoleKind
    arm: str  # "teacher" for the teacher
    generation: int
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    train: TrainSection | None = None
    teacher: str | None = None  # key of the role this one distils from
    members: tuple[str, ...] = ()  # ensemble members, generation order
    augmentation: str | None = None  # of the training batches, "default" resolved
    condition: str | None = None  # of a protocol of several conditions (study.conditions)
    # feature-based distillation (study.feature_losses): method, weight, params, taps and
    # connectors, resolved; None for a role that distils logits only
    features: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        """The result-determining configuration of this role (no names, no device; the
        condition's name, where there is one, keeps conditions' runs apart)."""
        named = {"condition": self.condition} if self.condition is not None else {}
        if self.features is not None:  # absent otherwise: other roles' fingerprints unchanged
            named["features"] = self.features
        if self.kind == "ensemble":
            return {"kind": self.kind, "size": len(self.members), **named}
        train = self.train.model_dump(exclude={"device"}) if self.train else {}
        return {
            **named,
            "kind": self.kind,
            "generation": self.generation,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "loss": self.loss,
            "loss_params": self.loss_params,
            "train": train,
            "augmentation": self.augmentation,
        }

    def params(self) -> dict[str, Any]:
        """Flat config for the tracker's parameters (names included, for humans)."""
        flat: dict[str, Any] = {"role": self.key, "arm": self.arm, "generation": self.generation}
        flat.update(_flatten(self.config()))
        if self.teacher:
            flat["teacher_role"] = self.teacher
        if self.members:
            flat["members"] = ",".join(self.members)
        return flat


@dataclass(frozen=True)
class Plan:
    """All roles in dependency order, and the seeds each is run for."""

    protocol: Protocol
    roles: tuple[Role, ...]
    seeds: tuple[int, ...]

    def role(self, key: str) -> Role:
        for r in self.roles:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def trained_roles(self) -> list[Role]:
        return [r for r in self.roles if r.kind != "ensemble"]

    @property
    def n_runs(self) -> int:
        return len(self.roles) * len(self.seeds)

    @property
    def n_epochs(self) -> int:
        """Epochs of training in total, all roles and seeds."""
        return sum(r.train.epochs for r in self.trained_roles if r.train) * len(self.seeds)

    def fingerprints(self, data_identity: str) -> dict[tuple[str, int], str]:
        """Fingerprint of every (role, seed), computed in dependency order."""
        out: dict[tuple[str, int], str] = {}
        for seed in self.seeds:
            for role in self.roles:
                deps = [role.teacher] if role.teacher else list(role.members)
                out[(role.key, seed)] = fingerprint(
                    role, seed, [out[(d, seed)] for d in deps], data_identity
                )
        return out

    def dependencies(self, key: str) -> list[str]:
        role = self.role(key)
        return [role.teacher] if role.teacher else list(role.members)

    def require_trainable(self) -> None:
        """UserInputError naming file and field when a loss parameter is still "tuned"."""
        p = self.protocol
        for role in self.trained_roles:
            pending = [k for k, v in role.loss_params.items() if v == TUNED]
            if not pending:
                continue
            index = next(i for i, a in enumerate(p.arms) if a.name == role.arm)
            hint = (
                _tuned_file_hint(p)
                if p.tune is not None
                else " (add a [tune] section for this arm)"
            )
            raise UserInputError(
                f"{pending[0]} is '{TUNED}' but there is no tuning result for it: run "
                f"'study tune {p.source}' first{hint}",
                source=p.source,
                field=f"arms[{index}] ('{role.arm}').loss.{pending[0]}",
            )


def _tuned_file_hint(p: Protocol) -> str:
    """Why an existing results/<study>/tuned.json gave no value: another tuning config, or
    no trial of this one completed; empty when there is no file."""
    path = tuned_path(p.study.name)
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    if not answers_to(written, tuning_hash(p)):
        return (
            f" ({path} is for another tuning config: the [tune] section, or the tuned "
            "role's recipe, teacher or data, changed since it was written)"
        )
    return f" ({path} is for this tuning config, but no trial of it completed)"


def fingerprint(role: Role, seed: int, dep_fingerprints: list[str], data_identity: str) -> str:
    """Hash of everything that determines one (role, seed)'s result."""
    payload = {
        "config": role.config(),
        "seed": seed,
        "depends_on": dep_fingerprints,
        "data": data_identity,
        "version": __version__,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def derive_seed(seed: int, generation: int, stream: str) -> int:
    """A 63-bit seed for one random stream of (seed, generation).

    Streams depend on the generation and not on the arm, so generation k of two arms
    starts from the same initialisation and sees the same data order for a given seed
    (common random numbers: differences between arms are the arms', not the streams').
    """
    digest = hashlib.sha256(f"{seed}/{generation}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def expand(protocol: Protocol, tuned: Mapping[str, float] | None = None) -> Plan:
    """The protocol's roles in dependency order: teacher, then each arm's chain.

    A loss parameter given as "tuned" takes its number from ``tuned`` (the best values of
    `study tune`: ``tuned_values``), so that fingerprints hold the number trained
    with. Without one it stays "tuned": the plan can be shown but not trained
    (``Plan.require_trainable`` says why).
    """
    check_size(protocol)
    augmentation = resolved_augmentation(protocol)
    teacher = Role(
        key=TEACHER,
        kind="teacher",
        arm=TEACHER,
        generation=0,
        arch=protocol.teacher.arch,
        arch_kwargs=resolve_model_kwargs(protocol.teacher.arch, protocol.teacher.kwargs),
        loss="ce",
        loss_params=resolve_loss_params("ce", {}),
        train=protocol.train_for(protocol.teacher.train),
        augmentation=augmentation,
    )
    roles: list[Role] = [teacher]
    for index, arm in enumerate(protocol.arms):
        arch, kwargs = resolved_arch(protocol, arm)
        kwargs = resolve_model_kwargs(arch, kwargs)
        params = _with_tuned(protocol, index, tuned)
        train = protocol.train_for(arm.train)
        previous = TEACHER
        generations: list[str] = []
        for k in range(1, arm.generations + 1):
            key = f"{arm.name}/gen{k}"
            roles.append(
                Role(
                    key=key,
                    kind="student",
                    arm=arm.name,
                    generation=k,
                    arch=arch,
                    arch_kwargs=kwargs,
                    loss=arm.loss.name,
                    loss_params=params,
                    train=train,
                    teacher=previous,
                    augmentation=augmentation,
                    features=resolved_features(protocol, index, k),
                )
            )
            generations.append(key)
            previous = key
            if arm.ensemble and k >= 2:
                roles.append(
                    Role(
                        key=f"{arm.name}/ens{k}",
                        kind="ensemble",
                        arm=arm.name,
                        generation=k,
                        members=tuple(generations),
                    )
                )
    if protocol.condition is not None:
        roles = [dataclasses.replace(r, condition=protocol.condition) for r in roles]
    return Plan(protocol=protocol, roles=tuple(roles), seeds=tuple(protocol.seeds))


MAX_RUNS = 100_000
"""The most (role, seed) runs a plan may have (also ``protocol.MAX_SEEDS`` seeds): each is
an MLflow run, so a typo (``seeds = 1000000``, ``generations = 50000``) would otherwise
start creating millions of them."""


def check_size(protocol: Protocol) -> None:
    """Refuse a plan of more than ``MAX_RUNS`` runs before any role is built, naming the field
    that makes it large: the arm with the most generations when the roles alone are too
    many for one seed, else ``study.seeds``."""
    arms = protocol.arms
    roles = 1 + sum(a.generations + (a.generations - 1 if a.ensemble else 0) for a in arms)
    seeds = len(protocol.seeds)
    if roles * seeds <= MAX_RUNS:
        return
    field = "study.seeds"
    if roles > MAX_RUNS:
        index = max(range(len(arms)), key=lambda i: arms[i].generations)
        field = f"arms[{index}] ('{arms[index].name}').generations"
    raise UserInputError(
        f"the plan is {roles} roles x {seeds} seeds = {roles * seeds} runs; at most "
        f"{MAX_RUNS} runs are allowed (each is an MLflow run)",
        source=protocol.source,
        field=field,
    )


def resolved_augmentation(protocol: Protocol) -> str:
    """The augmentation the training batches get: ``"default"`` is the dataset's own."""
    given = protocol.data.augmentation
    return dataset_info(protocol.data.dataset).default_augmentation if given == "default" else given


def _with_tuned(
    protocol: Protocol, index: int, tuned: Mapping[str, float] | None
) -> dict[str, Any]:
    """An arm's loss parameters, "tuned" replaced by the tuned number where there is one."""
    arm = protocol.arms[index]
    if protocol.tune is None or protocol.tune.arm != arm.name:
        tuned = None  # the values were tuned for the [tune] arm's loss, and only for it
    given = {
        k: tuned[k] if tuned and v == TUNED and k in tuned else v
        for k, v in arm.loss.params.items()
    }
    try:
        return resolve_loss_params(arm.loss.name, given)
    except UserInputError as e:  # a tuned number outside the loss's range
        raise UserInputError(
            f"tuned value: {e.reason}",
            source=protocol.source,
            field=f"arms[{index}] ('{arm.name}').loss.{e.field}",
        ) from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{name}."))
        else:
            out[name] = v
    return out


# -- the tuning study's fingerprint and its result ---------------------------------------


def tune_section(protocol: Protocol) -> TuneSection:
    """The protocol's [tune] section; UserInputError when it has none."""
    if protocol.tune is None:
        raise UserInputError(
            "the protocol has no [tune] section: add one naming the arm and the ranges to "
            "search (see README, 'Tuning')",
            source=protocol.source,
            field="tune",
        )
    return protocol.tune


def tuned_roles(protocol: Protocol) -> tuple[Role, list[Role]]:
    """The tuned role and the chain it distils from (teacher, generations 1..g-1), as the
    protocol gives them: no tuned values, which would make the study depend on its own
    result."""
    spec = tune_section(protocol)
    plan = expand(protocol)
    student = plan.role(f"{spec.arm}/gen{spec.generation}")
    chain = [plan.role(TEACHER)] + [
        plan.role(f"{spec.arm}/gen{k}") for k in range(1, spec.generation)
    ]
    return student, chain


def tuning_config(protocol: Protocol) -> dict[str, Any]:
    """Everything that determines a trial of the protocol's tuning study, given its values.

    The search (ranges, metric, tuning seeds, epochs per seed, sampler seed, pruner), the
    tuned role's config as the protocol gives it ("tuned" where a trial fills in its
    value) and, per tuning seed, the fingerprint of the model it distils from (teacher
    and earlier generations: their recipes, architectures, seeds and the package version).
    The data enters through the protocol's [data] settings (the data's content hash is
    only known once the data is loaded: ``tune`` checks it against the one the study
    was started with). Not included: names, the device, [execution], and the budget
    (``trials``): raising it tops the same study up.
    """
    spec = tune_section(protocol)
    student, chain = tuned_roles(protocol)
    seeds = spec.seed_list
    data = protocol.data.model_dump(exclude={"root", "download"})
    data_key = "protocol-data:" + digest(data)
    teachers = Plan(protocol=protocol, roles=tuple(chain), seeds=tuple(seeds))
    fingerprints = teachers.fingerprints(data_key)
    space = {k: getattr(spec, k).model_dump() for k in SEARCHABLE if getattr(spec, k)}
    return {
        "space": space,
        "metric": spec.metric,
        "direction": spec.direction,
        "seeds": seeds,
        "epochs": spec.epochs or student.train.epochs,
        "sampler": "tpe",
        "sampler_seed": spec.sampler_seed,
        "pruner": spec.pruner,
        "student": student.config(),
        "teachers": {str(s): fingerprints[(chain[-1].key, s)] for s in seeds},
        "data": data,
        "version": __version__,
    }


def tuning_hash(protocol: Protocol) -> str:
    """The hash of ``tuning_config(protocol)`` (sha256, 32 hex digits): the tuning study's
    fingerprint, which its result file answers to (``tuned.answers_to``)."""
    return digest(tuning_config(protocol))


def load_tuned(protocol: Protocol, results_dir: Path = Path("results")) -> dict | None:
    """The protocol's tuning result (results/<study>/tuned.json), None if there is none.

    A file written for another tuning config than the protocol's counts as none: another
    arm or generation, other ranges, seeds, epochs, metric, sampler seed or pruner, or
    another recipe, teacher or data for the tuned role (``tuning_hash``); so does any file
    when the protocol has no [tune] section, since nothing ties it to the protocol.
    """
    if protocol.tune is None:
        return None
    result = read_tuned(tuned_path(protocol.study.name, results_dir))
    return result if answers_to(result, tuning_hash(protocol)) else None


def tuned_values(
    protocol: Protocol, results_dir: Path = Path("results")
) -> dict[str, float] | None:
    """The best values found by `study tune`, for ``expand(protocol, tuned=...)``; None
    when there is no result for the protocol's current tuning config, or no trial of it
    completed."""
    result = load_tuned(protocol, results_dir)
    best = result.get("best_params") if result else None
    return dict(best) if best else None

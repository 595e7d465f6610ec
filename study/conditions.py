"""Protocols of several conditions: one study over teachers, students, datasets, recipes.

The tables KD papers are judged by are grids (BAN's Table 1: one BAN chain per teacher), and
the question a reader asks of one is "does the method help across architectures, and will it
help on the next one?". A protocol answers it by declaring its conditions, either as a list

    [[conditions]]
    name = "wrn-28-2"
    teacher = { arch = "wrn", kwargs = { depth = 28, widen_factor = 2 } }
    train = { batch_size = 64 }          # overrides of [train]
    seeds = 5                            # overrides [study] seeds

or as the product of named levels along axes (``[[grid.teacher]]``, ``[[grid.data]]``: each
level a table like a condition; the condition's name joins the level names with '+').

Each condition overrides the protocol's ``[data]``, ``[train]``, ``[teacher]``, the arms'
students (``arms = { kd = { arch = "resnet_cifar", kwargs = { depth = 20 } } }``; ``arch =
"same"``: the teacher's architecture, Born-Again) and the seeds. A section's keys are
replaced one by one; a table value (kwargs, a loss) is replaced whole, and a new ``arch``
without ``kwargs`` starts from no kwargs (another architecture's kwargs do not apply).
A condition cannot change an arm's generations or ensemble, nor the analysis: every
condition has the same roles and is analysed alike, so that each contrast is measured in
every condition.

``load_study`` expands the file into one validated single-condition ``Protocol`` per
condition (``Protocol.condition`` names it), so that planning, training and the report of
one condition work as they do for a protocol of one condition. The condition's name is part
of its roles' configuration, hence of its fingerprints, its runs' tags and its rows in the
export. A protocol without conditions loads as it always did.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.errors import UserInputError
from study.paths import within
from study.protocol import (
    CONDITION_KEYS,
    Protocol,
    parse_protocol,
    parse_toml,
    protocol_from_data,
    read_protocol_file,
)

NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
JOIN = "+"
"""Joins the level names of a grid condition: 'cifar100+wrn-28-1'."""
CONDITION_KEYS_ALLOWED = ("name", "description", "seeds", "data", "train", "teacher", "arms")
SECTIONS = ("data", "train", "teacher")
ARM_KEYS = ("arch", "kwargs", "loss", "train")
SAME = "same"
"""``arch = "same"`` in an arm's override: the student is the teacher's architecture."""
MIN_CONDITIONS = 2


@dataclass(frozen=True)
class Condition:
    """One condition as declared: its name, its overrides and where it is in the file."""

    name: str
    overrides: dict[str, Any]
    where: str  # "conditions[1] ('wrn-28-2')" or "grid (data[0], teacher[1])"

    @property
    def description(self) -> str:
        return str(self.overrides.get("description", ""))


@dataclass(frozen=True)
class Study:
    """The protocols of a file: one per condition, in declaration order (one when the file
    declares no conditions, whose ``condition`` is None)."""

    source: str
    protocols: tuple[Protocol, ...]
    conditions: tuple[Condition, ...] = ()

    @property
    def name(self) -> str:
        return self.protocols[0].study.name

    @property
    def has_conditions(self) -> bool:
        return bool(self.conditions)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.conditions]

    def protocol(self, condition: str) -> Protocol:
        for p in self.protocols:
            if p.condition == condition:
                return p
        raise UserInputError(
            f"no condition '{condition}'; conditions: {', '.join(self.names) or 'none'}",
            source=self.source,
            field="conditions",
        )


def load_study(path: str | Path) -> Study:
    """Read and validate a protocol file of one condition or several."""
    return parse_study(read_protocol_file(path), source=str(path))


def load_condition(path: str | Path, condition: str | None) -> Protocol:
    """The protocol of one condition of a file (``None``: the file has no conditions)."""
    study = load_study(path)
    if condition is None:
        if study.has_conditions:
            raise UserInputError(
                f"the protocol declares {len(study.conditions)} conditions: name one",
                source=str(path),
                field="conditions",
            )
        return study.protocols[0]
    return study.protocol(condition)


def parse_study(text: str, *, source: str = "<protocol>") -> Study:
    """Validate a protocol given as TOML text, expanding its conditions."""
    data = parse_toml(text, source=source)
    if not any(k in data for k in CONDITION_KEYS):
        return Study(source, (parse_protocol(text, source=source),))
    if all(k in data for k in CONDITION_KEYS):
        raise UserInputError(
            "declare the conditions either as a list ([[conditions]]) or as a grid ([grid]), "
            "not both",
            source=source,
            field="grid",
        )
    sha = hashlib.sha256(text.encode()).hexdigest()
    base = {k: v for k, v in data.items() if k not in CONDITION_KEYS}
    protocol_from_data(copy.deepcopy(base), source=source, sha256=sha)  # the base is valid
    if "tune" in base:
        raise UserInputError(
            "[tune] is not supported with conditions (a tuned value would be one condition's): "
            "tune a protocol of one condition and give the numbers here",
            source=source,
            field="tune",
        )
    conditions = (
        _listed(data["conditions"], source) if "conditions" in data else _grid(data["grid"], source)
    )
    _check_names(conditions, source)
    protocols = tuple(_resolved(base, c, source, sha) for c in conditions)
    _check_distinct(protocols, conditions, source)
    return Study(source, protocols, tuple(conditions))


def _listed(raw: Any, source: str) -> list[Condition]:
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise UserInputError(
            "conditions is a list of tables: [[conditions]] name = ...",
            source=source,
            field="conditions",
        )
    out = []
    for i, table in enumerate(raw):
        name = table.get("name")
        where = f"conditions[{i}]" + (f" ('{name}')" if isinstance(name, str) else "")
        _check_keys(table, where, source)
        out.append(Condition(_name(name, where, source), dict(table), where))
    return out


def _grid(raw: Any, source: str) -> list[Condition]:
    """The product of the grid's axes, in declaration order (the last axis varies fastest)."""
    if not isinstance(raw, dict) or not raw:
        raise UserInputError(
            "grid is a table of axes, each a list of levels: [[grid.teacher]] name = ...",
            source=source,
            field="grid",
        )
    axes: list[list[tuple[str, dict[str, Any]]]] = []
    for axis, levels in raw.items():
        field = f"grid.{axis}"
        if not NAME.match(str(axis)):
            raise UserInputError(
                f"an axis name is letters, digits, _ . - (got {axis!r})", source=source, field=field
            )
        if (
            not isinstance(levels, list)
            or not levels
            or not all(isinstance(x, dict) for x in levels)
        ):
            raise UserInputError(
                f"an axis is a non-empty list of levels: [[{field}]] name = ...",
                source=source,
                field=field,
            )
        named = []
        for i, level in enumerate(levels):
            where = f"{field}[{i}]" + (f" ('{level['name']}')" if "name" in level else "")
            _check_keys(level, where, source)
            named.append(
                (f"{axis}[{i}]", {**level, "name": _name(level.get("name"), where, source)})
            )
        axes.append(named)
    out = []
    for combo in itertools.product(*axes):
        where = "grid (" + ", ".join(w for w, _ in combo) + ")"
        merged = _merge_levels([level for _, level in combo], where, source)
        out.append(Condition(merged["name"], merged, where))
    return out


def _merge_levels(levels: list[dict[str, Any]], where: str, source: str) -> dict[str, Any]:
    """One condition from one level of each axis; two levels setting one key conflict."""
    merged: dict[str, Any] = {"name": JOIN.join(level["name"] for level in levels)}
    descriptions = [level["description"] for level in levels if level.get("description")]
    if descriptions:
        merged["description"] = "; ".join(str(d) for d in descriptions)
    owner: dict[tuple[str, ...], str] = {}
    for level in levels:
        for key, value in level.items():
            if key in ("name", "description"):
                continue
            paths = [(key,)]
            if isinstance(value, dict) and key in SECTIONS:
                paths = [(key, k) for k in value]
            elif isinstance(value, dict) and key == "arms":
                paths = [(key, arm, k) for arm, o in value.items() for k in o]
            for path in paths:
                if path in owner:
                    raise UserInputError(
                        f"levels '{owner[path]}' and '{level['name']}' both set "
                        f"{'.'.join(path)}: a grid's axes must set different keys",
                        source=source,
                        field=where,
                    )
                owner[path] = level["name"]
            if isinstance(value, dict) and key in (*SECTIONS, "arms"):
                target = merged.setdefault(key, {})
                for k, v in value.items():
                    target[k] = {**target.get(k, {}), **v} if key == "arms" else v
            else:
                merged[key] = value
    return merged


RESERVED = ("figures", "conditions.csv", "run.json", "tuned.json")
"""Names that reports/<study>/ or results/<study>/ use themselves: a condition's folder
there cannot take them (nor a name starting with '.', such as '..')."""


def _name(name: Any, where: str, source: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise UserInputError(
            f"a condition needs a name of letters, digits, _ . - (got {name!r})",
            source=source,
            field=f"{where}.name",
        )
    if name.startswith(".") or name in RESERVED or re.search(r"\.(md|html|tex|csv|json)$", name):
        raise UserInputError(
            f"condition name {name!r} would collide with the study's own files (its folder "
            f"is reports/<study>/{name}/): not {', '.join(RESERVED)}, a name starting with "
            "'.' or ending in a file suffix",
            source=source,
            field=f"{where}.name",
        )
    return name


def _check_keys(table: dict[str, Any], where: str, source: str) -> None:
    for key, value in table.items():
        if key not in CONDITION_KEYS_ALLOWED:
            raise UserInputError(
                f"unknown key '{key}'; a condition may set: {', '.join(CONDITION_KEYS_ALLOWED)}"
                " (the analysis and the arms' structure are the same in every condition)",
                source=source,
                field=f"{where}.{key}",
            )
        if key in (*SECTIONS, "arms") and not isinstance(value, dict):
            raise UserInputError(
                f"{key} is a table of overrides, as {key} = {{ ... }}",
                source=source,
                field=f"{where}.{key}",
            )
    for arm, override in (table.get("arms") or {}).items():
        field = f"{where}.arms.{arm}"
        if not isinstance(override, dict):
            raise UserInputError(
                "an arm's override is a table, as { arch = ... }", source=source, field=field
            )
        bad = [k for k in override if k not in ARM_KEYS]
        if bad:
            raise UserInputError(
                f"a condition may override an arm's {', '.join(ARM_KEYS)}, not '{bad[0]}': "
                "every condition has the same roles (generations, ensembles)",
                source=source,
                field=f"{field}.{bad[0]}",
            )


def _check_names(conditions: list[Condition], source: str) -> None:
    if len(conditions) < MIN_CONDITIONS:
        raise UserInputError(
            f"{len(conditions)} condition: a study across conditions needs at least "
            f"{MIN_CONDITIONS} (a protocol of one condition declares none)",
            source=source,
            field="conditions" if conditions and "[" in conditions[0].where else "grid",
        )
    seen: dict[str, str] = {}
    for c in conditions:
        if c.name in seen:
            raise UserInputError(
                f"condition name '{c.name}' is used twice ({seen[c.name]} and {c.where})",
                source=source,
                field=f"{c.where}.name",
            )
        seen[c.name] = c.where


def _resolved(base: dict[str, Any], c: Condition, source: str, sha: str) -> Protocol:
    """The base protocol with the condition's overrides applied, validated."""
    data = copy.deepcopy(base)
    o = c.overrides
    if "seeds" in o:
        data.setdefault("study", {})["seeds"] = o["seeds"]
    for section in SECTIONS:
        if section in o:
            merged = {**data.get(section, {}), **o[section]}
            if section == "teacher" and "arch" in o[section] and "kwargs" not in o[section]:
                merged.pop("kwargs", None)  # another architecture's kwargs do not apply
            data[section] = merged
    arms = {a.get("name"): a for a in data.get("arms", []) if isinstance(a, dict)}
    for name, override in (o.get("arms") or {}).items():
        if name not in arms:
            raise UserInputError(
                f"no arm '{name}' to override; arms: {', '.join(map(str, arms))}",
                source=source,
                field=f"{c.where}.arms.{name}",
            )
        arm = arms[name]
        if "arch" in override and "kwargs" not in override:
            arm.pop("kwargs", None)
        arm.update(override)
        if arm.get("arch") == SAME:
            arm.pop("arch")
            arm.pop("kwargs", None)
    try:
        return protocol_from_data(data, source=source, sha256=sha, condition=c.name)
    except UserInputError as e:
        field = f"{c.where}.{e.field}" if e.field else c.where
        raise UserInputError(e.reason, source=source, field=field) from None


def _check_distinct(protocols: tuple[Protocol, ...], conditions: list[Condition], source: str):
    """Two conditions that train the same networks on the same data with the same recipe
    are one condition counted twice (the meta-analysis would take them as independent)."""
    seen: dict[str, Condition] = {}
    for p, c in zip(protocols, conditions, strict=True):
        key = json.dumps(p.model_dump(exclude={"study"}), sort_keys=True, default=str)
        if key in seen:
            raise UserInputError(
                f"conditions '{seen[key].name}' and '{c.name}' train the same networks on the "
                "same data with the same recipe (they differ at most in their seeds): one "
                "condition counted twice; give its seeds to one of them",
                source=source,
                field=f"{c.where}",
            )
        seen[key] = c


def study_dir(root: Path, p: Protocol) -> Path:
    """Where a protocol's files go under ``root`` (results/, reports/): <study>, or
    <study>/<condition> for one condition of several."""
    return within(root, p.study.name, *([p.condition] if p.condition is not None else []))

"""The protocol: the validated, immutable content of one study's TOML file.

A protocol declares the study (name, seeds), the data, the training recipe, the teacher,
the arms (each a chain of student generations trained with one loss) and the analysis
plan. ``load_protocol`` is the single way in: it parses TOML, validates every field with
pydantic (unknown keys are errors), checks architecture, loss and dataset names against
their registries, and raises ``UserInputError`` naming the file, the field and what is
allowed. Nothing downstream ever sees an invalid protocol.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from study.data import dataset_info, dataset_names
from study.errors import UserInputError
from study.feature_losses import resolve_features
from study.losses import TUNED, get_loss, resolve_loss_params
from study.models import resolve_model_kwargs, validate_model_kwargs
from study.models.taps import tap_shapes


class _Strict(BaseModel):
    # strict: TOML is typed, so `seeds = true`, `seeds = "3"` or `val_size = true` are
    # mistakes, not values to coerce; inf and nan are never a setting
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


NAME_MAX_LENGTH = 100
"""Study and arm names become folder names (``reports/<study>``, ``mlartifacts/<study>``),
MLflow experiment names (``<study>/_claims/<fingerprint>/<attempt>``: 256 characters on a
database server) and Optuna study names: 100 characters keep each of them in its limit."""
MAX_SEEDS = 10_000
"""The most seeds a study (or a tuning) may have: a count beyond it is a typo, not a plan."""


def _path_safe(v: str) -> str:
    """A name that is also a folder name: '.' and '..' would be the folder itself or its
    parent (``reports/../report.md`` overwrote the user's own file)."""
    if v in (".", ".."):
        raise ValueError(f"{v!r} is not allowed: the name becomes a folder name")
    return v


class StudySection(_Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seeds: int | list[int] = 5

    _name = field_validator("name")(_path_safe)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"seeds must be a count >= 1 or a non-empty list, got {v}")
            if v > MAX_SEEDS:
                raise ValueError(f"seeds = {v}: at most {MAX_SEEDS} seeds are allowed")
        else:
            if not v:
                raise ValueError("seeds must be a count >= 1 or a non-empty list, got []")
            if len(v) > MAX_SEEDS:
                raise ValueError(f"{len(v)} seeds listed: at most {MAX_SEEDS} are allowed")
            if any(s < 0 for s in v):
                raise ValueError("seeds in a list must be integers >= 0")
            if len(set(v)) != len(v):
                raise ValueError("seeds in a list must be distinct")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class DataSection(_Strict):
    dataset: str = "digits"
    root: str = "data"
    download: bool = False
    val_size: float = Field(default=0.1, ge=0)
    data_seed: int = Field(default=0, ge=0)
    augmentation: Literal["default", "crop_flip", "crop", "flip", "none"] = "default"
    image_size: int | None = Field(default=None, ge=4)
    synthetic: dict[str, int] = Field(
        default_factory=dict,
        description="options of the synthetic dataset: n_train, n_test, num_classes, "
        "channels, image_size, seed",
    )
    verify_checksums: bool = Field(
        default=True,
        description="pickled data files (CIFAR's) must be the published ones; false reads "
        "files of your own as data only, with a warning",
    )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        allowed = dataset_names()
        if v not in allowed:
            raise ValueError(f"unknown dataset '{v}'; allowed: {', '.join(allowed)}")
        return v

    @model_validator(mode="after")
    def _synthetic(self) -> DataSection:
        from study.data.sources import SYNTHETIC_DEFAULTS, SYNTHETIC_MINIMUMS

        if self.synthetic and self.dataset != "synthetic":
            raise ValueError(
                f"[data.synthetic] options are for dataset = 'synthetic', not {self.dataset!r}"
            )
        unknown = sorted(set(self.synthetic) - set(SYNTHETIC_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown synthetic option {unknown[0]!r}; allowed: {', '.join(SYNTHETIC_DEFAULTS)}"
            )
        for key, value in self.synthetic.items():
            if value < SYNTHETIC_MINIMUMS[key]:
                raise ValueError(
                    f"synthetic option {key} = {value}; allowed: an integer >= "
                    f"{SYNTHETIC_MINIMUMS[key]}"
                )
        return self

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("val_size is a fraction in [0, 1) or a whole number of samples")
        return v


class TrainSection(_Strict):
    """The training recipe. Every field here determines results and enters fingerprints."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0, le=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    deterministic: bool | None = Field(
        default=None, description="deterministic algorithms; default: on for CPU, off for GPU"
    )

    @model_validator(mode="after")
    def _schedule(self) -> TrainSection:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov = true needs optimizer = 'sgd' and momentum > 0")
        if any(m < 1 or m >= self.epochs for m in self.milestones):
            raise ValueError(
                f"milestones must lie in [1, epochs - 1 = {self.epochs - 1}] (milestone m "
                f"lowers the lr from epoch m + 1 on, so m = epochs would never apply), "
                f"got {self.milestones}"
            )
        if sorted(set(self.milestones)) != list(self.milestones):
            raise ValueError("milestones must be strictly increasing")
        return self


class TeacherSection(_Strict):
    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class LossSection(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ArmSection(_Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=r"^[A-Za-z0-9_.\-]+$")
    arch: str | None = None
    kwargs: dict[str, Any] | None = None
    loss: LossSection
    features: dict[str, Any] | None = Field(
        default=None,
        description="feature-based distillation added to the loss: method (fitnet, at, sp, "
        "rkd), weight, student_taps, teacher_taps and the method's parameters "
        "(study.feature_losses)",
    )
    generations: int = Field(default=1, ge=1)
    ensemble: bool = False
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss(cls, v: Any) -> Any:
        # `loss = "ban"` or `loss = { name = "kd", temperature = 4, alpha = 0.9 }`
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, dict) and "name" not in v:
            raise ValueError(
                'the loss needs a name: loss = "ban", or loss = { name = "kd", '
                "temperature = 4.0, alpha = 0.9 }"
            )
        if isinstance(v, dict) and "name" in v and "params" not in v:
            return {"name": v["name"], "params": {k: x for k, x in v.items() if k != "name"}}
        return v

    @field_validator("name")
    @classmethod
    def _reserved(cls, v: str) -> str:
        if v == "teacher":
            raise ValueError("'teacher' is reserved for the teacher role; pick another arm name")
        return _path_safe(v)


class AnalysisSection(_Strict):
    metric: Literal["test_acc", "test_nll", "test_ece", "val_acc", "val_nll"] = "test_acc"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    correction: Literal["holm", "bh", "bonferroni", "none"] = "holm"
    test: Literal["t", "wilcoxon", "permutation"] = "t"
    min_effect: float = Field(default=0.003, gt=0)
    comparisons: list[str] = Field(
        default_factory=lambda: ["vs_teacher", "vs_previous", "ensembles", "arms"],
        description="which families of comparisons the report makes",
    )
    pairs: list[list[str]] = Field(
        default_factory=list,
        description='comparisons of their own family, A - B: [["kd/gen1", "small/gen1"]]',
    )
    contrasts: list[list[str]] = Field(
        default_factory=list,
        description='differences A - B pooled across conditions: [["ban/gen1", "teacher"]]',
    )
    default_contrasts: bool = Field(
        default=True,
        description="also pool the comparisons of the per-condition report (its families "
        "and pairs) across conditions; false: only the declared contrasts",
    )

    @field_validator("comparisons")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        allowed = {"vs_teacher", "vs_previous", "ensembles", "arms"}
        bad = [x for x in v if x not in allowed]
        if bad:
            raise ValueError(f"unknown comparison family {bad}; allowed: {sorted(allowed)}")
        return v


class SearchRange(_Strict):
    """A search range of one hyperparameter: [low, high], optionally on a log scale."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"empty search range: low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


class TuneSection(_Strict):
    """What `study tune` searches, on the validation split, with seeds of its own."""

    arm: str
    generation: int = Field(default=1, ge=1)
    temperature: SearchRange | None = None
    alpha: SearchRange | None = None
    lr: SearchRange | None = None
    metric: Literal["val_acc", "val_nll"] = "val_acc"
    trials: int = Field(default=20, ge=1)
    seeds: int | list[int] = Field(
        default=3, description="tuning seeds; a count n means seeds 1000..1000+n-1"
    )
    sampler_seed: int = Field(default=0, ge=0)
    pruner: Literal["median", "hyperband", "none"] = "median"
    epochs: int | None = Field(default=None, ge=1)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        return StudySection._seeds(v)

    @property
    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, int):
            return list(range(TUNING_SEED_BASE, TUNING_SEED_BASE + self.seeds))
        return list(self.seeds)

    @property
    def direction(self) -> str:
        return "maximize" if self.metric == "val_acc" else "minimize"


TUNING_SEED_BASE = 1000


class SlurmSection(_Strict):
    """Resources of each Slurm job (one job per independent chain of a seed pack)."""

    partition: str | None = None
    gpus_per_job: int = Field(default=1, ge=0)
    cpus_per_job: int = Field(default=4, ge=1)
    mem_gb: float = Field(default=16, gt=0)
    time_min: int = Field(default=24 * 60, ge=1)
    account: str | None = None
    folder: str = "slurm-logs"


class ExecutionSection(_Strict):
    """How the plan runs. Nothing here changes results, so nothing here enters fingerprints."""

    executor: Literal["local", "slurm"] = "local"
    pack: int | Literal["auto"] = Field(
        default="auto",
        description="seeds trained together as one fused computation ('auto': as many as pay)",
    )
    slurm: SlurmSection = SlurmSection()
    heartbeat_s: float = Field(default=30.0, gt=0, description="claim heartbeat interval")
    stale_after_s: float = Field(
        default=300.0, gt=0, description="a claim whose heartbeat is older is taken over"
    )
    checkpoint_every_s: float = Field(
        default=60.0,
        ge=0,
        description="seconds between resume checkpoints of a training (0: every epoch)",
    )
    log_every_s: float = Field(
        default=10.0,
        ge=0,
        description="seconds between flushes of per-epoch metrics to MLflow (0: every epoch)",
    )
    channels_last: bool = Field(
        default=True,
        description="convolutional networks in the channels-last memory format: faster "
        "convolutions, results that differ from NCHW's in float rounding only",
    )

    @field_validator("pack")
    @classmethod
    def _pack(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"pack must be >= 1 or 'auto', got {v}")
        return v


class Protocol(_Strict):
    """One study, validated. Build it with ``load_protocol`` (or ``parse_protocol``)."""

    study: StudySection
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    teacher: TeacherSection
    arms: list[ArmSection] = Field(min_length=1)
    analysis: AnalysisSection = AnalysisSection()
    tune: TuneSection | None = None
    execution: ExecutionSection = ExecutionSection()
    source: str = Field(default="<protocol>", exclude=True)
    sha256: str = Field(default="", exclude=True)
    condition: str | None = Field(default=None, exclude=True)  # study.conditions sets it

    @model_validator(mode="after")
    def _unique_arms(self) -> Protocol:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique; repeated: {dupes}")
        return self

    @model_validator(mode="after")
    def _tuning(self) -> Protocol:
        t = self.tune
        if t is None:
            return self
        names = [a.name for a in self.arms]
        if t.arm not in names:
            raise ValueError(f"tune.arm '{t.arm}' is not an arm; arms: {names}")
        if t.generation > self.arm(t.arm).generations:
            raise ValueError(
                f"tune.generation {t.generation} exceeds arm '{t.arm}''s "
                f"{self.arm(t.arm).generations} generation(s)"
            )
        overlap = sorted(set(t.seed_list) & set(self.seeds))
        if overlap:
            raise ValueError(
                f"tune.seeds overlap the study's evaluation seeds {overlap}: tuning seeds must "
                "be disjoint so that reported numbers come from seeds the tuning never saw"
            )
        if t.temperature is None and t.alpha is None and t.lr is None:
            raise ValueError("tune needs at least one of temperature, alpha, lr to search")
        return self

    @property
    def seeds(self) -> list[int]:
        return self.study.seed_list

    def train_for(self, overrides: dict[str, Any]) -> TrainSection:
        """The study's training recipe with a role's overrides applied (and re-validated)."""
        return TrainSection(**{**self.train.model_dump(), **overrides})

    def arm(self, name: str) -> ArmSection:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def role_keys(self) -> list[str]:
        """The roles the plan will have, in its order (``plan.expand`` builds them)."""
        keys = ["teacher"]
        for a in self.arms:
            for k in range(1, a.generations + 1):
                keys += [f"{a.name}/gen{k}"] + (
                    [f"{a.name}/ens{k}"] if a.ensemble and k > 1 else []
                )
        return keys


def _field_path(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            inside = isinstance(node, list) and item < len(node) and isinstance(node[item], dict)
            name = node[item].get("name") if inside else None
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ('{name}')" if name else "")
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def _from_validation_error(
    err: ValidationError, data: dict[str, Any], source: str, root: type[BaseModel] | None = None
) -> UserInputError:
    """Every problem pydantic found, the first in the error's field, the others after it
    ("also: field '...': ...") so that one run of `study validate` shows them all."""
    # An unknown key often explains the errors after it (a misspelt required field): first.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    problems: list[tuple[str, str]] = []
    seen: set[tuple[Any, ...]] = set()
    for e in errors:
        loc = _clean_loc(e["loc"])
        if loc in seen:
            continue
        seen.add(loc)
        # A union's members each fail at the same place ("an integer", "a list", "'auto'"):
        # one problem, said as its alternatives.
        alternatives = [x for x in errors if _clean_loc(x["loc"]) == loc]
        problems.append((_field_path(loc, data), _reason(e, alternatives, loc, root)))
    field, reason = problems[0]
    for other_field, other_reason in problems[1:]:
        where = f"field '{other_field}': " if other_field else ""
        reason += f"; also: {where}{other_reason}"
    return UserInputError(reason, source=source, field=field or None)


def _reason(
    first: dict[str, Any],
    alternatives: list[dict[str, Any]],
    loc: tuple[Any, ...],
    root: type[BaseModel] | None,
) -> str:
    """One problem in words: an unknown key with the allowed ones, a missing field, or
    what the value should be (and what it was)."""
    kind = first["type"]
    if kind == "extra_forbidden":
        reason = f"unknown key '{loc[-1]}'"
        model = _section_model(loc[:-1], root or Protocol)
        if model is not None:
            keys = [k for k, f in model.model_fields.items() if not f.exclude]
            reason += f"; allowed keys: {', '.join(keys)}"
        return reason
    if kind == "missing":
        return "required field is missing"
    messages = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in alternatives))
    lead = "Input should be "
    if len(messages) > 1 and all(m.startswith(lead) for m in messages):
        reason = lead + " or ".join(m.removeprefix(lead) for m in messages)
    else:
        reason = "; or: ".join(messages)
    if "input" in first and kind not in ("value_error",):
        reason += f" (got {first['input']!r})"
    return reason


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location without validator names and the union member names
    ("int", "list[int]", "literal['auto']") pydantic adds."""
    return tuple(
        x
        for x in loc
        if not (isinstance(x, str) and (x.startswith(("function-", "literal[")) or x in _MEMBERS))
    )


_MEMBERS = ("int", "list[int]", "str", "dict[str,any]", "float", "bool")


def _section_model(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for item in loc:
        if isinstance(item, int) or model is None:
            continue
        info = model.model_fields.get(item)
        if info is None:
            return None
        ann = info.annotation
        inner = getattr(ann, "__args__", (ann,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


CONDITION_KEYS = ("conditions", "grid")
"""Top-level keys of a protocol of several conditions (``study.conditions`` reads them)."""


def parse_protocol(text: str, *, source: str = "<protocol>") -> Protocol:
    """Validate a protocol of one condition given as TOML text. Raises ``UserInputError``."""
    data = parse_toml(text, source=source)
    declared = [k for k in CONDITION_KEYS if k in data]
    if declared:
        raise UserInputError(
            f"this protocol declares conditions ([{declared[0]}]); this command takes a "
            "protocol of one condition (validate, run, status, export and report take "
            "conditions)",
            source=source,
            field=declared[0],
        )
    analysis = data.get("analysis")
    if isinstance(analysis, dict) and analysis.get("contrasts"):
        raise UserInputError(
            "contrasts are pooled across conditions, and this protocol declares none: add "
            "[[conditions]] or a [grid], or compare roles of one condition with pairs",
            source=source,
            field="analysis.contrasts",
        )
    sha = hashlib.sha256(text.encode()).hexdigest()
    return protocol_from_data(data, source=source, sha256=sha)


def parse_toml(text: str, *, source: str) -> dict[str, Any]:
    """The TOML text as a dict; malformed TOML is a ``UserInputError`` naming the file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(f"malformed TOML: {e}", source=source) from None


def protocol_from_data(
    data: dict[str, Any], *, source: str, sha256: str, condition: str | None = None
) -> Protocol:
    """Validate a protocol given as parsed TOML (one condition of a protocol of several:
    ``condition`` names it). Raises ``UserInputError`` naming the file and the field."""
    internal = [k for k, f in Protocol.model_fields.items() if f.exclude and k in data]
    if internal:
        allowed = [k for k, f in Protocol.model_fields.items() if not f.exclude]
        raise UserInputError(
            f"unknown key '{internal[0]}'; allowed keys: {', '.join(allowed)}",
            source=source,
            field=internal[0],
        )
    try:
        protocol = Protocol(**data, source=source, condition=condition)
    except ValidationError as e:
        raise _from_validation_error(e, data, source) from None
    except TypeError as e:  # e.g. a section given as a value instead of a table
        raise UserInputError(str(e), source=source) from None
    raw_val = data.get("data", {}).get("val_size") if isinstance(data.get("data"), dict) else None
    if isinstance(raw_val, float) and raw_val >= 1:
        # A float of 1 or more reads as a count: 1.0 would hold out one example. Checked on
        # the TOML, not in DataSection: the logged JSON protocol holds every count as a float.
        raise UserInputError(
            f"val_size = {raw_val!r} is a float of 1 or more; allowed: a fraction below 1 "
            f"(0.1) or a whole number of examples written without a decimal point "
            f"({int(raw_val)})",
            source=source,
            field="data.val_size",
        )
    _check_registries(protocol)
    return protocol.model_copy(update={"sha256": sha256})


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol file. Raises ``UserInputError`` naming file and field."""
    return parse_protocol(read_protocol_file(path), source=str(path))


def read_protocol_file(path: str | Path) -> str:
    """A protocol file's text; a missing or unreadable file is a ``UserInputError``."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise UserInputError("protocol file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot read protocol file: {e}", source=str(path)) from None


def _check_registries(p: Protocol) -> None:
    """Names and parameters that live in registries: architectures, losses, train overrides."""

    def check(field: str, fn, *args) -> None:
        try:
            fn(*args)
        except UserInputError as e:
            inner = f"{field}.{e.field}" if e.field else field
            raise UserInputError(e.reason, source=p.source, field=inner) from None
        except ValidationError as e:  # a train override, validated as a TrainSection
            inner = _from_validation_error(e, {}, p.source, root=TrainSection)
            full = f"{field}.{inner.field}" if inner.field else field
            raise UserInputError(inner.reason, source=p.source, field=full) from None

    check("teacher", validate_model_kwargs, p.teacher.arch, p.teacher.kwargs)
    check("teacher.train", p.train_for, p.teacher.train)
    for i, arm in enumerate(p.arms):
        where = f"arms[{i}] ('{arm.name}')"
        check(where, validate_model_kwargs, *resolved_arch(p, arm))
        check(f"{where}.loss.name", get_loss, arm.loss.name)
        check(f"{where}.loss", resolve_loss_params, arm.loss.name, arm.loss.params)
        check(f"{where}.train", p.train_for, arm.train)
        for generation in range(1, min(arm.generations, 2) + 1):
            check(f"{where}.features", resolved_features, p, i, generation)
        pending = [k for k, v in arm.loss.params.items() if v == TUNED]
        if pending and p.tune is not None and arm.name != p.tune.arm:
            raise UserInputError(
                f"{pending[0]} is '{TUNED}', but [tune] tunes arm '{p.tune.arm}': only that "
                "arm takes tuned values; give a number here",
                source=p.source,
                field=f"{where}.loss.{pending[0]}",
            )
    if p.tune is not None:
        _check_tuning(p)
    _check_pairs(p)
    if p.data.val_size == 0 and p.analysis.metric.startswith("val_"):
        raise UserInputError(
            f"metric '{p.analysis.metric}' is measured on the validation split, and "
            "data.val_size = 0 leaves none; use a test_* metric or val_size > 0",
            source=p.source,
            field="analysis.metric",
        )


def _check_pairs(p: Protocol) -> None:
    """[analysis] pairs and contrasts: two distinct roles of this protocol each, none twice."""
    for key in ("pairs", "contrasts"):
        _check_role_pairs(p, key, getattr(p.analysis, key))


def _check_role_pairs(p: Protocol, key: str, pairs: list[list[str]]) -> None:
    roles = p.role_keys
    seen: dict[frozenset[str], int] = {}
    for i, pair in enumerate(pairs):
        field = f"analysis.{key}[{i}]"
        if len(pair) != 2:
            reason = f'a pair is two role names, as ["kd/gen1", "small/gen1"]; got {pair}'
        elif unknown := [r for r in pair if r not in roles]:
            reason = f"'{unknown[0]}' is not a role of this protocol; roles: {', '.join(roles)}"
        elif pair[0] == pair[1]:
            reason = f"a pair compares two roles; this one compares '{pair[0]}' with itself"
        elif frozenset(pair) in seen:
            reason = f"{pair} repeats analysis.{key}[{seen[frozenset(pair)]}] (A - B or B - A)"
        else:
            seen[frozenset(pair)] = i
            continue
        raise UserInputError(reason, source=p.source, field=field)


def _check_tuning(p: Protocol) -> None:
    """[tune] against the arm it tunes: what can be tuned, in which range, on which split."""
    t = p.tune
    assert t is not None
    index = next(i for i, a in enumerate(p.arms) if a.name == t.arm)
    arm = p.arms[index]
    rules = get_loss(arm.loss.name).params

    def refuse(field: str, reason: str) -> None:
        raise UserInputError(reason, source=p.source, field=field)

    if p.data.val_size == 0:
        refuse("data.val_size", "[tune] searches on the validation split: val_size must be > 0")
    for name in ("temperature", "alpha"):
        searched = getattr(t, name)
        if searched is None:
            continue
        if name not in rules:
            refuse(
                f"tune.{name}",
                f"arm '{arm.name}' uses loss '{arm.loss.name}', which has no {name} to tune; "
                f"its parameters: {', '.join(rules) or 'none'}",
            )
        for end in (searched.low, searched.high):
            try:
                rules[name].check(name, end)
            except UserInputError:
                refuse(
                    f"tune.{name}",
                    f"range [{searched.low}, {searched.high}] leaves the values {name} may "
                    f"take ({rules[name].allowed()})",
                )
    if t.lr is not None and t.lr.low <= 0:
        refuse("tune.lr", f"range [{t.lr.low}, {t.lr.high}]: a learning rate must be > 0")
    pending = [k for k, v in arm.loss.params.items() if v == TUNED]
    for name in pending:
        if getattr(t, name, None) is None:
            refuse(
                f"arms[{index}] ('{arm.name}').loss.{name}",
                f"{name} is '{TUNED}' but [tune] has no range for it: add tune.{name}",
            )
    if pending and t.generation > 1:
        refuse(
            "tune.generation",
            f"arm '{arm.name}' has '{TUNED}' loss parameters, so its generations before "
            f"{t.generation} cannot be trained before the tuning ends: tune generation 1, "
            "or give numbers",
        )


def resolved_arch(p: Protocol, arm: ArmSection) -> tuple[str, dict[str, Any]]:
    """The student architecture of an arm: its own, or the teacher's (Born-Again)."""
    if arm.arch is None:
        return p.teacher.arch, dict(p.teacher.kwargs if arm.kwargs is None else arm.kwargs)
    return arm.arch, dict(arm.kwargs or {})


def input_facts(p: Protocol) -> dict[str, int] | None:
    """in_channels, image_size, num_classes of the protocol's data where they are known
    before reading it (the dataset's static facts, data.image_size, the synthetic options);
    None otherwise (an image folder's classes)."""
    info = dataset_info(p.data.dataset)
    facts = {
        "in_channels": info.in_channels,
        "image_size": info.image_size,
        "num_classes": info.num_classes,
    }
    if p.data.image_size is not None:
        facts["image_size"] = p.data.image_size
    synthetic = p.data.synthetic
    for ours, theirs in (
        ("in_channels", "channels"),
        ("image_size", "image_size"),
        ("num_classes", "num_classes"),
    ):
        if theirs in synthetic:
            facts[ours] = synthetic[theirs]
    return facts if all(isinstance(v, int) for v in facts.values()) else None


def resolved_features(p: Protocol, index: int, generation: int) -> dict[str, Any] | None:
    """Arm ``index``'s feature configuration for its generation ``generation`` (taps,
    connectors, weight and parameters; ``feature_losses.resolve_features``), or None
    without a ``features`` table. Generation 1 distils from the teacher's taps, later ones
    from the previous generation's (the arm's own architecture). Where the data's shape is
    unknown before reading it, tap names are checked and shapes are not."""
    arm = p.arms[index]
    if arm.features is None:
        return None
    s_arch, s_kwargs = resolved_arch(p, arm)
    t_arch, t_kwargs = (
        (p.teacher.arch, dict(p.teacher.kwargs)) if generation == 1 else (s_arch, s_kwargs)
    )
    facts = input_facts(p)
    known = facts is not None
    facts = facts or {"in_channels": 3, "image_size": 32, "num_classes": 10}
    s_shapes = tap_shapes(s_arch, s_kwargs, **facts)
    t_shapes = tap_shapes(t_arch, t_kwargs, **facts)
    if not known:
        s_shapes = dict.fromkeys(s_shapes, ())
        t_shapes = dict.fromkeys(t_shapes, ())
    resolved = resolve_features(arm.features, s_shapes, t_shapes)
    # which network the teacher taps are read from (generation k > 1: the arm's own)
    resolved["teacher_arch"] = t_arch
    resolved["teacher_kwargs"] = resolve_model_kwargs(t_arch, t_kwargs)
    return resolved

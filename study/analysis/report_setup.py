"""The report's Setup section: what was compared, from the protocol and the tracker.

One row per role: its architecture and parameter count, the model it learns from, its
loss with the parameters it trained with (tuned values say so, with the tuning's result
file), its recipe where it differs from ``[train]``, and the wall time its runs took. Then
the data (dataset, split sizes, augmentation, identity), the seeds, the device, precision
and environment the runs recorded. Nothing here needs the data files: split sizes and the
input shape come from the runs' ``data_facts`` tag.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from study.analysis.report_data import Report
from study.analysis.stats import format_seeds
from study.analysis.table import Table
from study.analysis.units import NOT_AVAILABLE
from study.data import dataset_info
from study.errors import UserInputError
from study.feature_losses import get_feature_method
from study.features import connector_parameter_count
from study.losses import TUNED, get_loss
from study.models import create_model, resolve_model_kwargs
from study.plan import Plan, Role

RECIPE_KEYS_SHOWN = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule")


def architecture_of(plan: Plan, key: str) -> str:
    """A role's architecture in words, with the settings that differ from the
    architecture's defaults: 'mlp (hidden = [32])'; an ensemble is its members'."""
    role = plan.role(key)
    if role.kind == "ensemble":
        member = architecture_of(plan, role.members[-1])
        return f"ensemble of {len(role.members)} x {member}"
    try:
        defaults = resolve_model_kwargs(str(role.arch), {})
    except UserInputError:  # a setting without a default (a depth): every one is shown
        defaults = {}
    given = {k: v for k, v in role.arch_kwargs.items() if k not in defaults or defaults[k] != v}
    kwargs = ", ".join(f"{k} = {_value(v)}" for k, v in given.items())
    return f"{role.arch} ({kwargs})" if kwargs else str(role.arch)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def input_shape(rep: Report) -> dict[str, int] | None:
    """in_channels, image_size, num_classes: as the runs recorded them, else the dataset's
    static facts; None when only the data files could tell."""
    facts = rep.collected.meta.get("data_facts") or {}
    keys = ("in_channels", "image_size", "num_classes")
    if all(isinstance(facts.get(k), int) for k in keys):
        return {k: facts[k] for k in keys}
    info = dataset_info(rep.protocol.data.dataset)
    static = {k: getattr(info, k) for k in keys}
    if rep.protocol.data.image_size is not None:
        static["image_size"] = rep.protocol.data.image_size
    return static if all(isinstance(v, int) for v in static.values()) else None


def parameter_count(role: Role, shape: dict[str, int] | None) -> int | None:
    """Trainable parameters of a trained role's network (None: unknown input shape)."""
    if shape is None or role.kind == "ensemble" or role.arch is None:
        return None
    with torch.random.fork_rng(devices=[]):
        model = create_model(role.arch, **shape, **role.arch_kwargs)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def tuned_parameters(rep: Report, role: Role) -> set[str]:
    """The role's loss parameters that `study tune` chose (the protocol says "tuned")."""
    if role.kind != "student":
        return set()
    arm = rep.protocol.arm(role.arm)
    return {k for k, v in arm.loss.params.items() if v == TUNED}


def loss_words(rep: Report, role: Role) -> str:
    """'kd (temperature = 4, alpha = 0.9)'; a tuned value is marked '[tuned]'."""
    if role.kind == "ensemble":
        return "none (evaluated: mean of the members' softmax)"
    tuned = tuned_parameters(rep, role)
    params = ", ".join(
        f"{k} = {_value(v)}" + (" [tuned]" if k in tuned else "")
        for k, v in role.loss_params.items()
    )
    words = f"{role.loss} ({params})" if params else role.loss
    return words + feature_words(role)


def feature_words(role: Role) -> str:
    """' + 100 x fitnet (stage2 -> stage2, conv1x1_bn; hint_epochs = 0)' for a feature role,
    empty otherwise."""
    f = role.features
    if not f:
        return ""
    pairs = ", ".join(
        f"{s} -> {t}" + (f" via {c}" if c else "")
        for s, t, c in zip(f["student_taps"], f["teacher_taps"], f["connectors"], strict=True)
    )
    params = "".join(f"; {k} = {_value(v)}" for k, v in f["params"].items())
    return f" + {_value(f['weight'])} x {f['method']} ({pairs}{params})"


def connector_count(role: Role, shape: dict[str, int] | None) -> int | None:
    """Trainable parameters of a feature role's connectors (None: none, or unknown shape)."""
    if shape is None or not role.features:
        return None
    return connector_parameter_count(role, shape)


def recipe_differences(rep: Report, role: Role) -> str:
    """The role's training recipe where it differs from [train] ('same' otherwise)."""
    if role.train is None:
        return NOT_AVAILABLE
    base = rep.protocol.train.model_dump()
    mine = role.train.model_dump()
    differ = [f"{k} = {_value(v)} (not {_value(base[k])})" for k, v in mine.items() if base[k] != v]
    return "; ".join(differ) or "as [train]"


def wall_times(runs: pd.DataFrame) -> dict[str, float]:
    """Per role, the seconds during which at least one of its finished runs was open (the
    union of their [start, end] intervals: the seeds of a pack train together, and the
    gaps between separate invocations do not count)."""
    out: dict[str, float] = {}
    if "start_time" not in runs or "end_time" not in runs:
        return out
    done = runs[runs["status"] == "FINISHED"]
    for role, group in done.groupby("role", sort=False):
        spans = group[["start_time", "end_time"]].apply(pd.to_numeric, errors="coerce").dropna()
        if not len(spans):
            continue
        total, end = 0.0, -math.inf
        for start, stop in sorted(spans.itertuples(index=False)):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        out[str(role)] = total / 1000.0
    return out


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return NOT_AVAILABLE
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def setup_tables(rep: Report) -> dict[str, Table]:
    """The roles table: architecture, parameters, learns from, loss, recipe, wall time."""
    shape = input_shape(rep)
    times = wall_times(rep.collected.runs)
    packs = _pack_sizes(rep.collected.runs)
    counts = {r.key: parameter_count(r, shape) for r in rep.plan.roles}
    connectors = {r.key: connector_count(r, shape) for r in rep.plan.roles}

    def parameters(r: Role) -> str:
        if r.kind == "ensemble":
            known = [counts[m] for m in r.members]
            return f"{sum(known):,} (members)" if all(x is not None for x in known) else "–"
        if counts[r.key] is None:
            return NOT_AVAILABLE
        extra = connectors[r.key]  # trained with the student, not part of its network
        return f"{counts[r.key]:,}" + (f" (+ {extra:,} connector)" if extra else "")

    def learns_from(r: Role) -> str:
        if r.kind == "ensemble":
            return ", ".join(r.members)
        if r.teacher is None or not (get_loss(r.loss).needs_teacher or r.features):
            return "labels only"
        return r.teacher

    def wall(r: Role) -> str:
        text = duration(times.get(r.key))
        return text + (f" ({packs[r.key]})" if r.key in packs and text != NOT_AVAILABLE else "")

    roles = Table.of(
        rep.plan.roles,
        ("role", "l", lambda r: r.key),
        ("architecture", "l", lambda r: architecture_of(rep.plan, r.key)),
        ("parameters", "r", parameters),
        ("learns from", "l", learns_from),
        ("loss", "l", lambda r: loss_words(rep, r)),
        ("recipe", "l", lambda r: recipe_differences(rep, r)),
        ("wall time", "r", wall),
    )
    return {"roles": roles}


def _pack_sizes(runs: pd.DataFrame) -> dict[str, str]:
    """Per role, 'packs of K' when its seeds trained K at a time."""
    if "pack_size" not in runs:
        return {}
    out = {}
    done = runs[runs["status"] == "FINISHED"]
    for role, group in done.groupby("role", sort=False):
        sizes = sorted(
            {int(x) for x in pd.to_numeric(group["pack_size"], errors="coerce").dropna()}
        )
        if sizes and sizes != [1]:
            out[str(role)] = "packs of " + ", ".join(map(str, sizes))
    return out


def setup_text(rep: Report) -> dict[str, str]:
    """The Setup section's sentences: data, seeds, recipe, device, losses, notes."""
    return {
        "data": _data_words(rep),
        "seeds": _seed_words(rep),
        "recipe": _recipe_words(rep),
        "device": _device_words(rep),
        "losses": _loss_glossary(rep),
        "roles": _roles_words(rep),
    }


def _data_words(rep: Report) -> str:
    d = rep.protocol.data
    info = dataset_info(d.dataset)
    facts = rep.collected.meta.get("data_facts") or {}
    val = f"val_size = {d.val_size:g} of the official training split, data_seed {d.data_seed}"
    if all(k in facts for k in ("train", "val", "test")):
        sizes = (
            f"{facts['train']:,} training, {facts['val']:,} validation ({val}) and "
            f"{facts['test']:,} test examples"
        )
    else:
        sizes = f"split sizes not recorded by these runs (an older version tracked them; {val})"
    shape = input_shape(rep)
    shaped = (
        f"; {shape['num_classes']} classes, inputs {shape['in_channels']} x "
        f"{shape['image_size']} x {shape['image_size']}"
        if shape
        else ""
    )
    roles = [r for r in rep.plan.roles if r.augmentation]
    augmentation = roles[0].augmentation if roles else d.augmentation
    identity = rep.collected.meta.get("data_identity") or "unknown"
    return (
        f"{d.dataset} ({info.description}): {sizes}{shaped}; augmentation of the training "
        f"batches: {augmentation}; data identity {identity} (sha256 of the data as read "
        "and split, the same for every run)."
    )


def _seed_words(rep: Report) -> str:
    seeds = rep.plan.seeds
    text = (
        f"{len(seeds)} seeds ({format_seeds(seeds)}) for every role. Seed s of a student "
        "learns from seed s of its teacher, and generation k of every arm starts from the "
        "same initialisation and sees the same batches for a given seed: comparisons are "
        "paired by seed. The final epoch's model is evaluated (no selection on test)."
    )
    if rep.protocol.tune is not None:
        tune = rep.protocol.tune
        text += (
            f" Tuning (study tune) used seeds {format_seeds(tune.seed_list)}, disjoint from "
            "these, and the validation split only."
        )
    return text


def _recipe_words(rep: Report) -> str:
    t = rep.protocol.train
    shown = ", ".join(f"{k} = {_value(getattr(t, k))}" for k in RECIPE_KEYS_SHOWN)
    schedule = ""
    if t.schedule == "multistep":
        schedule = f", milestones = {_value(t.milestones)}, gamma = {t.gamma:g}"
    return (
        f"[train]: {t.epochs} epochs, batch size {t.batch_size}, {shown}{schedule}, "
        f"precision {t.precision}. The Roles table gives each role's differences from it."
    )


def _device_words(rep: Report) -> str:
    runs = rep.collected.runs
    done = runs[runs["status"] == "FINISHED"]
    devices = (
        done["device"].dropna().astype(str).value_counts()
        if "device" in done
        else pd.Series(dtype=int)
    )
    where = (
        ", ".join(f"{d} ({n} runs)" for d, n in devices.items())
        if len(devices)
        else "a device these results do not record"
    )
    deterministic = (
        sorted(set(done["deterministic"].dropna().astype(str))) if "deterministic" in done else []
    )
    text = f"Trained on {where}"
    if deterministic:
        text += f"; deterministic algorithms: {', '.join(deterministic).lower()}"
    env = rep.collected.meta.get("environment") or {}
    if env:
        machine = [
            f"{env['cpu']} ({env.get('torch_threads')} torch threads)" if env.get("cpu") else "",
            f"GPU {env['gpu']}" if env.get("gpu") else "",
            f"torch {env['torch']}" if env.get("torch") else "",
            f"CUDA {env['cuda']}" if env.get("cuda") and env.get("gpu") else "",
        ]
        text += (
            f". Run {env.get('run_id')} recorded {', '.join(m for m in machine if m)} "
            "(every run records its own environment in MLflow)"
        )
    return text + "."


def _loss_glossary(rep: Report) -> str:
    """One line per loss used: its formula, from the loss's own documentation."""
    used = list(dict.fromkeys(r.loss for r in rep.plan.roles if r.kind != "ensemble"))
    text = " ".join(f"{name}: {_formula(name)}" for name in used)
    methods = list(dict.fromkeys(r.features["method"] for r in rep.plan.roles if r.features))
    for name in methods:  # feature terms: the first sentence of the method's documentation
        doc = " ".join(get_feature_method(name).doc.split())
        text += f" {name}: {doc}"
    return text


def _formula(name: str) -> str:
    """The first paragraph of a loss's docstring, with its formula line when it has one."""
    doc = get_loss(name).doc
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    head = paragraphs[0] if paragraphs else name
    formula = next((p for p in paragraphs[1:] if "=" in p and len(p) < 200), "")
    head = head.rstrip(":,")
    text = f"{head}: {formula}" if formula and "=" not in head else head
    return text if text.endswith(".") else text + "."


def _roles_words(rep: Report) -> str:
    shape = input_shape(rep)
    tuned = rep.collected.meta.get("tuned") or {}
    text = (
        "Parameters: trainable weights of one network"
        + (
            ""
            if shape
            else " (unknown: the input shape is known only from the data, and these runs "
            "did not record it)"
        )
        + "; an ensemble sums its members'. Wall time: the time during which at least one "
        "of the role's runs was open (seeds of a pack train together; a resumed run counts "
        "from its first start)"
        + ("" if wall_times(rep.collected.runs) else " (–: these results record no run times)")
        + "; ensembles are evaluated, not trained."
    )
    if any(r.features for r in rep.plan.roles):
        text += (
            " (+ N connector): the regressors of a feature-distilling role, trained with the"
            " student and saved in its checkpoint but not part of the evaluated network;"
            " feature roles train one seed at a time, and their teacher runs in every step"
            " (its features are not cached)."
        )
    if tuned:
        where = rep.collected.meta.get("tuned_file") or "the tuning result"
        text += (
            f" [tuned]: chosen by study tune on the validation split ({where}); "
            + ", ".join(f"{k} = {_value(v)}" for k, v in tuned.items())
            + "."
        )
    return text

"""The model registry: architecture names -> factories, and the one way in (``create_model``).

A protocol names its networks as a string plus plain kwargs (TOML data). The registry turns
that into a module, and can check the kwargs cheaply, without building anything, while the
protocol is validated: a typo in ``depth`` stops the study before any training starts.

A family registers a factory with ``@register_model("name", check=...)``. The factory takes
the shape arguments ``in_channels``, ``num_classes`` and ``image_size`` plus its own kwargs,
all keyword-only; each kwarg has a default, and the set of kwargs and their defaults are read
from the factory's signature, so there is one place that declares them. ``check`` receives
the kwargs with defaults filled in and returns them normalised (ints as ints, floats as
floats, sequences as tuples), raising ``UserInputError`` for a value that cannot work.

This module also holds the two things every family shares: the value checks and the
standard initialisation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from study.errors import UserInputError

ModelFactory = Callable[..., nn.Module]
KwargsCheck = Callable[[dict[str, Any]], dict[str, Any]]

SHAPE_ARGS = ("in_channels", "num_classes", "image_size")


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture: its factory, its kwargs with defaults, its value check."""

    name: str
    factory: ModelFactory
    defaults: Mapping[str, Any]
    check: KwargsCheck


_REGISTRY: dict[str, ModelEntry] = {}


def _no_check(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(kwargs)


def register_model(
    name: str, *, check: KwargsCheck | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``name``; its keyword-only defaults are the accepted kwargs."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(factory).parameters
        missing = [arg for arg in SHAPE_ARGS if arg not in params]
        if missing:
            raise TypeError(f"factory for model {name!r} lacks the shape arguments {missing}")
        defaults: dict[str, Any] = {}
        for param in params.values():
            if param.name in SHAPE_ARGS:
                continue
            if param.kind is not param.KEYWORD_ONLY or param.default is param.empty:
                raise TypeError(
                    f"factory for model {name!r}: kwarg {param.name!r} must be keyword-only "
                    "with a default"
                )
            defaults[param.name] = param.default
        _REGISTRY[name] = ModelEntry(
            name=name,
            factory=factory,
            defaults=MappingProxyType(defaults),
            check=check or _no_check,
        )
        return factory

    return decorate


def model_names() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: object) -> ModelEntry:
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise UserInputError(f"unknown model {name!r}; allowed models: {', '.join(model_names())}")
    return entry


def resolve_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, normalised kwargs of model ``name``: defaults filled in, values checked.

    This is what a fingerprint or a tracker should record, so that ``{}`` and the explicit
    defaults describe the same run. Builds nothing.
    """
    entry = _entry(name)
    if not isinstance(kwargs, Mapping):
        raise UserInputError(
            f"kwargs of model {name!r} must be a table of key = value, not {type(kwargs).__name__}"
        )
    unknown = [key for key in kwargs if key not in entry.defaults]
    if unknown:
        accepted = ", ".join(entry.defaults) or "none"
        raise UserInputError(
            f"model {name!r} does not accept kwarg {', '.join(repr(k) for k in unknown)}; "
            f"accepted kwargs: {accepted}"
        )
    try:
        return entry.check({**entry.defaults, **kwargs})
    except UserInputError as err:
        raise UserInputError(f"model {name!r}: {err.reason}") from None


def validate_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``UserInputError`` if ``name`` is unknown or ``kwargs`` cannot build it. Cheap.

    The error carries no source or field: the caller (protocol validation) knows them.
    """
    resolve_model_kwargs(name, kwargs)


def create_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, **kwargs: Any
) -> nn.Module:
    """Build architecture ``name`` for ``[N, in_channels, image_size, image_size]`` inputs.

    The module returns logits ``[N, num_classes]``. Initialisation draws from torch's global
    generator, so the caller seeds it (same seed, same weights).
    """
    resolved = resolve_model_kwargs(name, kwargs)
    shape = {
        "in_channels": check_int("in_channels", in_channels),
        "num_classes": check_int("num_classes", num_classes),
        "image_size": check_int("image_size", image_size),
    }
    return _entry(name).factory(**shape, **resolved)


# --- value checks shared by the families: each returns the normalised value -----------------


def check_int(key: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools are refused: ``true`` is not a depth)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"{key}={value!r} is not allowed: must be an integer >= {minimum}")
    return int(value)


def check_float(
    key: str,
    value: Any,
    *,
    minimum: float,
    maximum: float = math.inf,
    include_minimum: bool = True,
    include_maximum: bool = True,
) -> float:
    """``value`` as a finite float inside the stated interval."""
    low = "[" if include_minimum else "("
    high = "]" if include_maximum and math.isfinite(maximum) else ")"
    interval = f"{low}{minimum:g}, {maximum:g}{high}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        number = float(value)
        ok = math.isfinite(number)
        ok = ok and (number >= minimum if include_minimum else number > minimum)
        ok = ok and (number <= maximum if include_maximum else number < maximum)
    if not ok:
        raise UserInputError(f"{key}={value!r} is not allowed: must be a number in {interval}")
    return float(value)


def check_dropout(key: str, value: Any) -> float:
    """A dropout probability: in [0, 1)."""
    return check_float(key, value, minimum=0.0, maximum=1.0, include_maximum=False)


def check_int_sequence(
    key: str, value: Any, *, minimum: int = 1, allow_empty: bool = False
) -> tuple[int, ...]:
    """A list or tuple of ints >= ``minimum``, as a tuple (TOML arrays arrive as lists)."""
    ok = isinstance(value, (list, tuple)) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        size = "a" if allow_empty else "a non-empty"
        raise UserInputError(
            f"{key}={value!r} is not allowed: must be {size} list of integers >= {minimum}"
        )
    return tuple(int(v) for v in value)


# --- initialisation shared by the from-scratch families -------------------------------------


def init_standard(model: nn.Module) -> None:
    """He (kaiming normal, fan-out) convolutions, BN as identity, zero linear biases.

    Fan-out as in the reference implementations of WRN, CIFAR ResNet and DenseNet
    (std = sqrt(2 / (k * k * out_channels))); linear weights keep PyTorch's default.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

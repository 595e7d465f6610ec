"""study: a statistical study harness for knowledge distillation and Born-Again Networks.

For notebooks: ``from study import load_results, compare`` (see ``study.api``)."""

from __future__ import annotations

from typing import Any

from study.version import __version__

_API = ("load_results", "compare", "collect_results")


def __getattr__(name: str) -> Any:
    """The notebook API, imported on first use: `import study` (every CLI command does)
    stays free of pandas, MLflow and the statistics."""
    if name in _API:
        from study import api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")


__all__ = ["__version__", *_API]

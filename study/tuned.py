"""The tuned-values contract: the file `study tune` writes and `study run` reads.

``results/<study>/tuned.json`` holds the best values of a tuning study with the hash of the
tuning config it was found for (``plan.tuning_hash``); a file whose hash is not the current
protocol's counts as no result. This module owns the file (its name, how it is written and
read, which hash it answers to); the hash itself is computed by ``plan``, which owns every
fingerprint, and the search that fills the file is ``tune``'s. Both import this module,
and it imports neither, so that the planner and the tuner agree on one contract without
importing each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from study.errors import UserInputError
from study.paths import within

TUNED_FILE = "tuned.json"
SEARCHABLE = ("temperature", "alpha", "lr")
"""The values a tuning study may search (the [tune] section's ranges)."""


def digest(payload: Any) -> str:
    """sha256 (32 hex digits) of a JSON-able payload, keys sorted: the tuning config's hash."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def tuned_path(study: str, results_dir: Path = Path("results")) -> Path:
    """Where the tuning result of study ``study`` lives: refused (``paths.within``) unless
    it lies inside ``results_dir``, like every output path built from a name."""
    return within(results_dir, study, TUNED_FILE)


def read_tuned(path: Path) -> dict | None:
    """The content of a tuned.json, None when there is no file; unreadable: UserInputError."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"cannot read the tuning result: {e}", source=str(path)) from None
    return result if isinstance(result, dict) else {}


def answers_to(result: dict | None, config_hash: str) -> bool:
    """Whether a tuning result was written for the tuning config with hash ``config_hash``."""
    return isinstance(result, dict) and result.get("config_hash") == config_hash


def write_tuned(result: dict[str, Any], path: Path) -> Path:
    """Write tuned.json atomically (a reader, or a second worker, never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path

"""Output paths built from names the user chose: checked to stay in their folder.

A study name becomes a folder (``reports/<study>``, ``results/<study>``, ``mlartifacts/<study>``).
The protocol refuses names that are not plain folder names ('.', '..', a '/', more than
``protocol.NAME_MAX_LENGTH`` characters); ``within`` is the second line: every output path is
resolved (links followed) and must lie inside its folder before anything is written to it
or deleted from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from study.errors import UserInputError


def within(folder: str | Path, *parts: str) -> Path:
    """``folder / parts...`` (as given, not resolved), refused unless it resolves to a path
    inside ``folder`` itself (not the folder, not beside it): a UserInputError naming both."""
    base = Path(folder).resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        shown = os.path.join(str(folder), *parts)
        raise UserInputError(
            f"the output path {shown} resolves to {path}, which is not inside {base}: "
            "refused (a name must be a plain folder or file name)",
            source=shown,
        )
    return Path(folder).joinpath(*parts)

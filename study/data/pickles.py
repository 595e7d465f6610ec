"""Pickled data files (CIFAR's python version), read without running anything.

``pickle.load``, which torchvision's CIFAR reader calls, runs whatever callable a pickle
names: a planted batch file is code. Here a file is read once, its md5 compared with the
published release's before any of it is unpickled, and then unpickled by
``DataOnlyUnpickler``, which builds dicts, lists, strings, numbers and numpy arrays and
refuses every other name (``os.system``, any class), naming the file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

from study.errors import UserInputError

PICKLE_DATA_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }
)
"""What a pickled data file may name: numpy arrays and the bytes inside them. Everything
else a pickle can name (``os.system``, any class) is refused unread."""


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler of plain data: dicts, lists, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_DATA_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a data file never does")
        return super().find_class(module, name)


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def read_pickled_batch(
    name: str, path: Path, published_md5: str, verify: bool
) -> tuple[dict[str, Any], bool]:
    """One CIFAR pickle, read once: its checksum checked against the published release
    before anything of it is unpickled, then unpickled by ``DataOnlyUnpickler`` (never by
    ``pickle.load``, which runs whatever a pickle names). Returns the entry and whether the
    file is the published one. A file that is not is refused with ``verify``; without, it is
    read (data only) and the caller warns."""
    blob = path.read_bytes()
    published = _md5(blob) == published_md5
    if verify and not published:
        raise UserInputError(
            f"dataset {name!r}: {path} is not the published file (md5 {_md5(blob)}, published "
            f"{published_md5}); refused before it is read. Place the published files there, "
            "or set [data] verify_checksums = false to use files of your own (read as data "
            "only: arrays, lists, strings, numbers)",
            field="root",
        )
    try:
        entry = DataOnlyUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise UserInputError(
            f"dataset {name!r}: {path} is not a CIFAR data file: {err}", field="root"
        ) from None
    if not isinstance(entry, dict):
        raise UserInputError(
            f"dataset {name!r}: {path} is not a CIFAR data file (it holds a "
            f"{type(entry).__name__}, not a dict)",
            field="root",
        )
    return entry, published

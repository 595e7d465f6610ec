"""Dataset sources: a registry of loaders, one per dataset, and ``load_data``, the one way in.

A loader reads the files of one dataset (through torchvision's own readers, so the on-disk
formats are parsed exactly as everybody else parses them) and returns the official train and
test sets as uint8 ``[N, C, H, W]`` tensors with int64 labels. ``load_data`` then resizes if
asked, carves the validation split, computes the normalisation statistics and the identity.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from study.data.augment import AUGMENTATIONS
from study.data.pickles import read_pickled_batch
from study.data.splits import (
    DataSplits,
    channel_stats,
    check_val_size,
    data_identity,
    stratified_split,
)
from study.errors import DataNotFoundError, UserInputError


def _torchvision() -> ModuleType:
    """torchvision, imported when files are read: importing it costs about a second (its
    ``ops`` import ``torch._dynamo``), and commands that never read a dataset (``study
    report``, ``study export``, ``study --help``) should not pay for it."""
    import torchvision  # noqa: PLC0415 - deferred for start-up time, see docstring

    return torchvision


def _v2() -> Any:
    """torchvision's ``transforms.v2``, imported on first use (see ``_torchvision``)."""
    from torchvision.transforms import v2  # noqa: PLC0415 - deferred for start-up time

    return v2


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known without reading its files.

    ``None`` means the fact is only known after reading (an image folder's classes) or is
    chosen by the user (the image size of an image folder, everything of ``synthetic``).
    """

    name: str
    in_channels: int | None
    image_size: int | None
    num_classes: int | None
    default_augmentation: str
    description: str = ""


@dataclass(frozen=True)
class SourceRequest:
    """What a loader is asked for: where the files are and the loader-relevant settings."""

    root: Path
    download: bool
    image_size: int | None
    options: Mapping[str, Any] = field(default_factory=dict)
    verify_checksums: bool = True  # pickled files must be the published ones (CIFAR)


@dataclass(frozen=True)
class SourceData:
    """The official train and test sets of a dataset, as read from its files."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple[str, ...]


Loader = Callable[[SourceRequest], SourceData]
_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}


def register_dataset(
    name: str,
    *,
    in_channels: int | None,
    image_size: int | None,
    num_classes: int | None,
    default_augmentation: str,
    description: str = "",
) -> Callable[[Loader], Loader]:
    """Register ``loader`` under ``name`` with its static facts."""
    if default_augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {default_augmentation!r}")

    def decorate(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        info = DatasetInfo(
            name, in_channels, image_size, num_classes, default_augmentation, description
        )
        _REGISTRY[name] = (info, loader)
        return loader

    return decorate


def dataset_names() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """Static facts of dataset ``name``; an unknown name is a ``UserInputError``."""
    if name not in _REGISTRY:
        raise UserInputError(
            f"unknown dataset {name!r}; allowed: {', '.join(dataset_names())}", field="dataset"
        )
    return _REGISTRY[name][0]


# ---------------------------------------------------------------------------------------
# The single way in
# ---------------------------------------------------------------------------------------


def load_data(
    name: str,
    *,
    root: str | Path,
    download: bool = False,
    val_size: int | float = 0.1,
    data_seed: int = 0,
    augmentation: str = "default",
    image_size: int | None = None,
    synthetic: dict | None = None,
    verify_checksums: bool = True,
) -> DataSplits:
    """Read dataset ``name`` into memory and split it into train / validation / test.

    ``val_size`` (a fraction in [0, 1) or a count) is carved from the official training set,
    stratified by class, with a draw seeded by ``data_seed``. ``image_size`` resizes the
    images (antialiased) at load time; for ``imagefolder`` it defaults to 32. ``synthetic``
    holds the options of the ``synthetic`` dataset and must be empty for the others.
    ``verify_checksums`` refuses pickled data files (CIFAR's) that are not the published
    ones before they are read; off, such files are read as data only, with a warning.
    ``augmentation='default'`` resolves to the dataset's default kind.

    About 90 lines because it checks every option against the dataset before anything is
    read (each check raises naming its field); the reading itself is each loader's.
    """
    info = dataset_info(name)
    loader = _REGISTRY[name][1]
    check_val_size(val_size)
    if isinstance(data_seed, bool) or not isinstance(data_seed, int):
        raise UserInputError(f"{data_seed!r} is not an integer", field="data_seed")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise UserInputError(f"{image_size!r} is not a positive integer", field="image_size")
    resolved_aug = info.default_augmentation if augmentation == "default" else augmentation
    if resolved_aug not in AUGMENTATIONS:
        raise UserInputError(
            f"unknown augmentation {augmentation!r}; allowed: default, {', '.join(AUGMENTATIONS)}",
            field="augmentation",
        )
    if synthetic and name != "synthetic":
        raise UserInputError(
            f"options for the synthetic dataset were given, but the dataset is {name!r}",
            field="synthetic",
        )

    request = SourceRequest(
        Path(root).expanduser(), bool(download), image_size, synthetic or {}, verify_checksums
    )
    source = loader(request)
    train_x, test_x = source.train_x, source.test_x
    if image_size is not None and train_x.shape[-1] != image_size:
        train_x, test_x = _resize(train_x, image_size), _resize(test_x, image_size)

    keep, held = stratified_split(source.train_y, val_size, seed=data_seed)
    # The identity hashes the split's result (the held-out indices), not its inputs:
    # val_size = 0.1, 144 and 0.1001 that hold out the same images are one identity, and
    # a change of the draw behind the split (a torch release that changes CPU randperm)
    # is another. val_size and data_seed act on the data only through ``held``, so they
    # are not hashed themselves.
    settings: dict[str, Any] = {"image_size": int(train_x.shape[-1])}
    if name == "synthetic":
        settings["synthetic"] = dict(sorted((synthetic or {}).items()))
    identity = data_identity(
        name,
        {
            "train_x": train_x,
            "train_y": source.train_y,
            "test_x": test_x,
            "test_y": source.test_y,
            "val_indices": held,
        },
        source.classes,
        settings,
    )

    mean, std = channel_stats(train_x[keep])
    return DataSplits(
        name=name,
        train_x=train_x[keep],
        train_y=source.train_y[keep],
        val_x=train_x[held],
        val_y=source.train_y[held],
        test_x=test_x,
        test_y=source.test_y,
        num_classes=len(source.classes),
        in_channels=int(train_x.shape[1]),
        image_size=int(train_x.shape[-1]),
        mean=mean,
        std=std,
        augmentation=resolved_aug,
        identity=identity,
        classes=source.classes,
    )


def _resize(x: Tensor, size: int) -> Tensor:
    """Square images resized to ``size`` x ``size`` with antialiasing, still uint8."""
    return _v2().functional.resize(x, [size, size], antialias=True)


# ---------------------------------------------------------------------------------------
# Shared pieces of the loaders
# ---------------------------------------------------------------------------------------


def _not_found(name: str, where: Path, expected: str, how: str | None = None) -> DataNotFoundError:
    how = how or "set download = true in [data] or place the files there"
    return DataNotFoundError(
        f"dataset {name!r}: files not found in {where}"
        + ("" if where.is_absolute() else f" ({where.absolute()})")
        + f" (expected {expected}); {how}",
        field="root",
    )


def _read_with_torchvision(
    name: str, where: Path, expected: str, download: bool, read: Callable[[], Any]
) -> Any:
    """Run a torchvision reader, turning its 'not found' and download failures into
    ``DataNotFoundError`` and unreadable files into ``UserInputError``."""
    try:
        return read()
    except RuntimeError as err:
        if "not found" in str(err).lower() and not download:
            raise _not_found(name, where, expected) from err
        if download:
            raise _download_failed(name, where, expected, err) from err
        raise
    except OSError as err:  # URLError and friends while downloading
        if download:
            raise _download_failed(name, where, expected, err) from err
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(
            f"dataset {name!r}: the files in {where} could not be read ({err!r})", field="root"
        ) from err


def _download_failed(name: str, where: Path, expected: str, err: Exception) -> DataNotFoundError:
    return _not_found(
        name,
        where,
        expected,
        f"downloading failed ({err}); place the files there by hand",
    )


def _warn_unless_published(
    name: str, directory: Path, md5s: Mapping[str, str | None], stacklevel: int
) -> None:
    """Warn when files differ from the published release (torchvision's md5 list).

    The loaders accept any file in the right format, so that subsets and test fixtures load;
    a result on such files is not a result on the published benchmark, and the user should
    know. The data identity records the exact content either way.
    """
    differing = []
    for filename, md5 in md5s.items():
        if md5 is None:
            continue
        digest = hashlib.md5(usedforsecurity=False)
        with open(directory / filename, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != md5:
            differing.append(filename)
    if differing:
        warnings.warn(
            f"dataset {name!r}: {', '.join(differing)} in {directory} differ from the published "
            "release (md5 mismatch); results are for these files, not the published benchmark",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def _hwc_to_chw(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the python pickle version
# ---------------------------------------------------------------------------------------


def _load_cifar(name: str, reader: type, request: SourceRequest) -> SourceData:
    """CIFAR's python version, laid out as torchvision's ``reader`` knows it (folder, file
    names, published md5s, label keys) and parsed as it parses it: the batches' rows
    stacked, each row 3 x 32 x 32 (channel-major), labels under ``labels`` (CIFAR-10) or
    ``fine_labels`` (CIFAR-100), class names under the meta file's key. Unpickled here, data
    only, after the checksum check (see ``pickles.read_pickled_batch``); ``download = true`` fetches
    and checks the archive with torchvision."""
    where = request.root / reader.base_folder
    meta = reader.meta
    listed = [*reader.train_list, *reader.test_list, [meta["filename"], meta["md5"]]]
    expected = ", ".join(f for f, _ in listed)
    if request.download and not all((where / f).is_file() for f, _ in listed):
        try:
            _torchvision().datasets.utils.download_and_extract_archive(
                reader.url, str(request.root), filename=reader.filename, md5=reader.tgz_md5
            )
        except (OSError, RuntimeError) as err:
            raise _download_failed(name, where, expected, err) from err
    if not all((where / f).is_file() for f, _ in listed):
        raise _not_found(name, where, expected)
    entries, differing = {}, []
    for filename, md5 in listed:
        entry, published = read_pickled_batch(name, where / filename, md5, request.verify_checksums)
        entries[filename] = entry
        if not published:
            differing.append(filename)
    if differing:
        warnings.warn(
            f"dataset {name!r}: {', '.join(differing)} in {where} differ from the published "
            "release (md5 mismatch); results are for these files, not the published benchmark",
            UserWarning,
            stacklevel=4,  # here <- load_cifar10/100 <- load_data <- the caller
        )

    def split(files: list[list[str]]) -> tuple[Tensor, Tensor]:
        try:
            images = np.vstack([entries[f]["data"] for f, _ in files]).reshape(-1, 3, 32, 32)
            labels = [y for f, _ in files for y in _labels(entries[f])]
        except (KeyError, ValueError, TypeError) as err:
            raise UserInputError(
                f"dataset {name!r}: the files in {where} are not CIFAR batches ({err!r})",
                field="root",
            ) from None
        return torch.from_numpy(np.ascontiguousarray(images)), torch.as_tensor(labels)

    train_x, train_y = split(reader.train_list)
    test_x, test_y = split(reader.test_list)
    try:
        classes = tuple(str(c) for c in entries[meta["filename"]][meta["key"]])
    except (KeyError, TypeError) as err:
        raise UserInputError(
            f"dataset {name!r}: {where / meta['filename']} lacks the class names ({err!r})",
            field="root",
        ) from None
    return SourceData(train_x, train_y.to(torch.int64), test_x, test_y.to(torch.int64), classes)


def _labels(entry: dict[str, Any]) -> list[int]:
    """A batch's labels: ``labels`` in CIFAR-10, ``fine_labels`` in CIFAR-100 (torchvision)."""
    return list(entry["labels"] if "labels" in entry else entry["fine_labels"])


@register_dataset(
    "cifar10",
    in_channels=3,
    image_size=32,
    num_classes=10,
    default_augmentation="crop_flip",
    description="CIFAR-10, python version: <root>/cifar-10-batches-py/",
)
def load_cifar10(request: SourceRequest) -> SourceData:
    """CIFAR-10 through torchvision's reader."""
    return _load_cifar("cifar10", _torchvision().datasets.CIFAR10, request)


@register_dataset(
    "cifar100",
    in_channels=3,
    image_size=32,
    num_classes=100,
    default_augmentation="crop_flip",
    description="CIFAR-100 (fine labels), python version: <root>/cifar-100-python/",
)
def load_cifar100(request: SourceRequest) -> SourceData:
    """CIFAR-100 with its 100 fine labels, through torchvision's reader."""
    return _load_cifar("cifar100", _torchvision().datasets.CIFAR100, request)


# ---------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: raw idx files
# ---------------------------------------------------------------------------------------


def _load_idx(name: str, reader: type, request: SourceRequest) -> SourceData:
    # torchvision checks only that the four raw files exist (no md5 on the unpacked files).
    where = request.root / reader.__name__ / "raw"
    expected = ", ".join(Path(url).stem for url, _ in reader.resources)

    def read() -> tuple[Any, Any]:
        train = reader(str(request.root), train=True, download=request.download)
        test = reader(str(request.root), train=False, download=False)
        return train, test

    train, test = _read_with_torchvision(name, where, expected, request.download, read)
    return SourceData(
        train_x=train.data.unsqueeze(1).contiguous(),
        train_y=train.targets.to(torch.int64),
        test_x=test.data.unsqueeze(1).contiguous(),
        test_y=test.targets.to(torch.int64),
        classes=tuple(train.classes),
    )


@register_dataset(
    "mnist",
    in_channels=1,
    image_size=28,
    num_classes=10,
    default_augmentation="none",
    description="MNIST raw idx files: <root>/MNIST/raw/",
)
def load_mnist(request: SourceRequest) -> SourceData:
    """MNIST through torchvision's reader."""
    return _load_idx("mnist", _torchvision().datasets.MNIST, request)


@register_dataset(
    "fashion_mnist",
    in_channels=1,
    image_size=28,
    num_classes=10,
    default_augmentation="none",
    description="Fashion-MNIST raw idx files: <root>/FashionMNIST/raw/",
)
def load_fashion_mnist(request: SourceRequest) -> SourceData:
    """Fashion-MNIST through torchvision's reader."""
    return _load_idx("fashion_mnist", _torchvision().datasets.FashionMNIST, request)


# ---------------------------------------------------------------------------------------
# SVHN: train_32x32.mat / test_32x32.mat (the 'extra' set is not used)
# ---------------------------------------------------------------------------------------


@functools.cache
def _svhn_files() -> type:
    """torchvision's SVHN reader, files checked for existence only: any file in the format
    loads (subsets, test fixtures), with a warning when it is not the published one. The
    .mat files are parsed (scipy.io.loadmat), not unpickled: nothing in them is run. (A
    class made on first use, as torchvision is imported then.)"""

    class SVHNFiles(_torchvision().datasets.SVHN):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.filename).is_file()

    return SVHNFiles


@register_dataset(
    "svhn",
    in_channels=3,
    image_size=32,
    num_classes=10,
    default_augmentation="crop",  # digits: a mirrored 2 is not a 2
    description="SVHN cropped digits: <root>/train_32x32.mat and <root>/test_32x32.mat",
)
def load_svhn(request: SourceRequest) -> SourceData:
    """SVHN (train and test, not extra) through torchvision's reader; label 10 becomes 0."""
    split_list = _torchvision().datasets.SVHN.split_list
    expected = f"{split_list['train'][1]}, {split_list['test'][1]}"

    def read() -> tuple[Any, Any]:
        train = _svhn_files()(str(request.root), split="train", download=request.download)
        test = _svhn_files()(str(request.root), split="test", download=request.download)
        return train, test

    train, test = _read_with_torchvision("svhn", request.root, expected, request.download, read)
    _warn_unless_published(
        "svhn",
        request.root,
        {split_list[s][1]: split_list[s][2] for s in ("train", "test")},
        stacklevel=3,
    )
    return SourceData(
        train_x=torch.from_numpy(np.ascontiguousarray(train.data)),
        train_y=torch.as_tensor(train.labels, dtype=torch.int64),
        test_x=torch.from_numpy(np.ascontiguousarray(test.data)),
        test_y=torch.as_tensor(test.labels, dtype=torch.int64),
        classes=tuple(str(d) for d in range(10)),
    )


# ---------------------------------------------------------------------------------------
# Image folders: <root>/train/<class>/*.png and <root>/test/<class>/* (or <root>/val/)
# ---------------------------------------------------------------------------------------

IMAGEFOLDER_DEFAULT_SIZE = 32
_IGNORED_NAMES = ("__pycache__",)
"""Besides hidden names (a leading '.'), what is never a class folder or an image."""


def _ignored(name: str) -> bool:
    """Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``, macOS ``._x.png``) and
    ``__pycache__``: what tools put next to the images, never a class or an image."""
    return name.startswith(".") or name in _IGNORED_NAMES


@functools.cache
def _image_folder() -> type:
    """torchvision's ImageFolder without hidden folders (and ``__pycache__``) as classes.

    torchvision takes every sub-directory as a class: Jupyter's ``.ipynb_checkpoints``
    would become class 0, move every real label up by one and add its copies to the data.
    Files under a hidden folder inside a class folder, and hidden files, are skipped too.
    Empty class folders are kept here (``allow_empty``) and reported by ``load_imagefolder``
    by name. (A class made on first use, as torchvision is imported then.)
    """

    class ImageFolder(_torchvision().datasets.ImageFolder):
        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            classes = sorted(
                entry.name
                for entry in Path(directory).iterdir()
                if entry.is_dir() and not _ignored(entry.name)
            )
            if not classes:
                raise FileNotFoundError(f"no class folder in {directory}")
            return classes, {name: i for i, name in enumerate(classes)}

    return ImageFolder


def _image_file(root: Path) -> Callable[[str], bool]:
    """``is_valid_file`` for ``_image_folder()``: an image extension and no ignored part."""
    extensions = _torchvision().datasets.folder.IMG_EXTENSIONS
    skip = len(os.path.join(str(root), ""))  # torchvision joins str(root) and the parts

    def valid(path: str) -> bool:
        parts = path[skip:].split(os.sep)
        return path.lower().endswith(extensions) and not any(_ignored(p) for p in parts)

    return valid


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _load_rgb(path: str) -> Any:
    """Open an image as 8-bit RGB (a PIL image), rescaling 16-bit images first.

    PIL's ``convert('RGB')`` clips the 16-bit modes (``I;16*``) and ``I`` at 255, so two
    16-bit images whose values all exceed 255 would both load as white. They are rescaled
    to 8 bits by ``value >> 8`` before the conversion: a fixed map, the same for every
    image (no per-image stretch, which would erase the intensity differences between
    images), and the one torchvision applies itself when it converts uint16 to uint8
    (``v2.functional.to_dtype(..., scale=True)``) and libpng applies when it strips 16-bit
    samples. A 16-bit image whose largest value is 1..255 is refused: it is 8-bit data in
    a 16-bit file (``Image.fromarray`` of an int array saves one) or nearly black, and
    ``>> 8`` would turn it black either way. Mode ``I`` (32-bit integers: some TIFFs, and
    16-bit PNGs in old Pillow) is taken as 16-bit data when its values lie in 0..65535 and
    refused otherwise; mode ``F`` (32-bit float) has no defined range and is refused. A
    refusal is a ``UserInputError`` naming the file. Data that fill only part of the 16-bit
    range keep few levels (12-bit values 0..4095 become 0..15): convert such files to 8
    bits with their own range first.
    """
    from PIL import Image

    with open(path, "rb") as f:
        image = Image.open(f)
        mode = image.mode
        if mode in _SIXTEEN_BIT_MODES or mode == "I":
            values = np.asarray(image)
            if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
                raise UserInputError(
                    f"dataset 'imagefolder': {path} is a 32-bit integer image with values "
                    f"outside 0..65535 ({values.min()}..{values.max()}); allowed: 8-bit or "
                    "16-bit images (16-bit ones are rescaled to 8 bits by value >> 8)",
                    field="root",
                )
            top = int(values.max()) if values.size else 0
            if 0 < top <= 255:
                bits = "32-bit integer" if mode == "I" else "16-bit"
                raise UserInputError(
                    f"dataset 'imagefolder': {path} is a {bits} image whose values "
                    f"all lie in 0..{top}: 8-bit data stored as 16 bits, or a nearly black "
                    "16-bit image; value >> 8, the fixed 16-to-8-bit map, would make it "
                    "black; allowed: 8-bit images, or 16-bit ones using the 16-bit range; "
                    "convert this one to 8 bits first",
                    field="root",
                )
            eight = (values.astype(np.int64) >> 8).astype(np.uint8)
            return Image.fromarray(eight).convert("RGB")  # uint8 2-D: mode L
        if mode == "F":
            raise UserInputError(
                f"dataset 'imagefolder': {path} is a 32-bit float image, which has no defined "
                "range to map onto 0..255; allowed: 8-bit or 16-bit images (16-bit ones are "
                "rescaled to 8 bits by value >> 8); convert it to one of those first",
                field="root",
            )
        return image.convert("RGB")


@register_dataset(
    "imagefolder",
    in_channels=3,
    image_size=None,
    num_classes=None,
    default_augmentation="crop_flip",
    description="one folder per class under <root>/train and <root>/test (or <root>/val)",
)
def load_imagefolder(request: SourceRequest) -> SourceData:
    """Images of any size, one folder per class; the test set is ``test/``, or ``val/`` when
    there is no ``test/``. Each image is read as RGB, its shorter side resized to
    ``image_size`` (default 32) and centre-cropped to a square, once, at load time.

    Hidden folders and files (a leading '.', e.g. ``.ipynb_checkpoints``) and
    ``__pycache__`` are ignored; a class folder with no image is an error naming it.
    Grayscale and palette images become three equal channels (palette: its colours).
    16-bit images are rescaled to 8 bits by ``value >> 8`` (see ``_load_rgb``); 32-bit
    float images are refused. The alpha channel of RGBA / LA images is dropped, not
    composited onto a background: a transparent pixel keeps the colour stored under it.
    """
    size = request.image_size or IMAGEFOLDER_DEFAULT_SIZE
    train_dir = request.root / "train"
    test_dir = request.root / "test"
    if not test_dir.is_dir() and (request.root / "val").is_dir():
        test_dir = request.root / "val"
    how = "this dataset cannot be downloaded; place one folder of images per class there"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise _not_found("imagefolder", d, "one folder per class (or val/ for test/)", how)
    v2 = _v2()
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def read(directory: Path) -> Any:
        try:
            dataset = _image_folder()(
                str(directory),
                transform=transform,
                loader=_load_rgb,
                is_valid_file=_image_file(directory),
                allow_empty=True,
            )
        except FileNotFoundError as err:
            raise _not_found(
                "imagefolder", directory, "one folder of images per class", how
            ) from err
        empty = sorted(set(dataset.classes) - {dataset.classes[t] for t in dataset.targets})
        if empty:
            extensions = ", ".join(_torchvision().datasets.folder.IMG_EXTENSIONS)
            raise UserInputError(
                f"dataset 'imagefolder': class folder{'s' if len(empty) > 1 else ''} "
                f"{', '.join(str(directory / name) for name in empty)} "
                f"{'have' if len(empty) > 1 else 'has'} no images; every class folder needs "
                f"at least one image ({extensions}); add images or remove the folder",
                field="root",
            )
        return dataset

    train, test = read(train_dir), read(test_dir)
    if train.classes != test.classes:
        raise UserInputError(
            f"dataset 'imagefolder': class folders differ between {train_dir} "
            f"({', '.join(train.classes)}) and {test_dir} ({', '.join(test.classes)})",
            field="root",
        )

    def stack(dataset: Any) -> tuple[Tensor, Tensor]:
        images = [dataset[i][0] for i in range(len(dataset))]
        return torch.stack(images), torch.as_tensor(dataset.targets, dtype=torch.int64)

    train_x, train_y = stack(train)
    test_x, test_y = stack(test)
    return SourceData(train_x, train_y, test_x, test_y, tuple(train.classes))


# ---------------------------------------------------------------------------------------
# scikit-learn's digits: bundled, offline
# ---------------------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20_240_601
"""The digits have no official test split. A fixed stratified 20 % is held out with this
seed, independent of ``data_seed``, so every study on ``digits`` reports on the same test
images; the validation split is then drawn from the remaining 80 %."""


@register_dataset(
    "digits",
    in_channels=1,
    image_size=8,
    num_classes=10,
    default_augmentation="none",
    description="scikit-learn's bundled 8x8 digits (1797 images), no files needed",
)
def load_digits(request: SourceRequest) -> SourceData:
    """scikit-learn's 8x8 digits, values 0..16 scaled to 0..255."""
    pixels, target = _digits_arrays()
    images = torch.from_numpy(np.round(pixels * (255.0 / 16.0)).astype(np.uint8))
    images = images.unsqueeze(1).contiguous()
    labels = torch.from_numpy(target.astype(np.int64))
    keep, test = stratified_split(labels, DIGITS_TEST_FRACTION, seed=DIGITS_TEST_SEED)
    return SourceData(
        train_x=images[keep],
        train_y=labels[keep],
        test_x=images[test],
        test_y=labels[test],
        classes=tuple(str(d) for d in range(10)),
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels ``[1797, 8, 8]`` (0..16) and labels, as ``load_digits`` gives them.

    Read from the file scikit-learn bundles, without importing scikit-learn: the import
    alone takes about a second, more than the whole of some commands' work on the digits.
    Where the file is not found (another scikit-learn layout), scikit-learn loads them.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.images, bunch.target


# ---------------------------------------------------------------------------------------
# Synthetic: generated in memory, for tests and benchmarks
# ---------------------------------------------------------------------------------------

SYNTHETIC_DEFAULTS: dict[str, int] = {
    "n_train": 512,
    "n_test": 256,
    "num_classes": 10,
    "channels": 3,
    "image_size": 32,
    "seed": 0,
}
SYNTHETIC_MINIMUMS: dict[str, int] = {
    "n_train": 1,
    "n_test": 1,
    "num_classes": 2,
    "channels": 1,
    "image_size": 4,  # as [data] image_size: the smallest map the networks take
    "seed": 0,
}
SYNTHETIC_NOISE = 48.0
"""Pixel noise (std, in 0..255 units) around each class prototype: learnable, not trivial."""


@register_dataset(
    "synthetic",
    in_channels=None,
    image_size=None,
    num_classes=None,
    default_augmentation="none",
    description="generated class prototypes plus noise; options in [data.synthetic]",
)
def load_synthetic(request: SourceRequest) -> SourceData:
    """Balanced classes; each class has a smooth random prototype image (a 4x4 pattern
    upsampled) and its examples are the prototype plus Gaussian pixel noise."""
    opts = dict(SYNTHETIC_DEFAULTS)
    for key, value in request.options.items():
        if key not in SYNTHETIC_DEFAULTS:
            raise UserInputError(
                f"unknown option {key!r}; allowed: {', '.join(SYNTHETIC_DEFAULTS)}",
                field=f"synthetic.{key}",
            )
        minimum = SYNTHETIC_MINIMUMS[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserInputError(
                f"{value!r} is not an integer >= {minimum}", field=f"synthetic.{key}"
            )
        opts[key] = value
    k, c, s = opts["num_classes"], opts["channels"], opts["image_size"]
    generator = torch.Generator().manual_seed(opts["seed"])
    low = torch.rand(k, c, 4, 4, generator=generator) * 128.0 + 64.0
    prototypes = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, c, s, s, generator=generator) * SYNTHETIC_NOISE
        images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
        return images, labels

    train_x, train_y = draw(opts["n_train"])
    test_x, test_y = draw(opts["n_test"])
    return SourceData(train_x, train_y, test_x, test_y, tuple(f"class_{i}" for i in range(k)))

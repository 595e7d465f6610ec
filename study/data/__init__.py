"""Datasets held in memory as tensors, split, normalised and augmented on any device.

``load_data(name, root=...)`` is the one way in; ``dataset_names`` and ``dataset_info`` tell
what exists without reading files. Training draws index permutations from per-seed
generators and augments whole batches with ``augment_batch``, then ``normalize``.
"""

from study.data.augment import (
    AUGMENTATIONS,
    AugmentDraw,
    apply_augmentation,
    augment_batch,
    draw_augmentation,
    normalize,
)
from study.data.sources import (
    DatasetInfo,
    dataset_info,
    dataset_names,
    load_data,
    register_dataset,
)
from study.data.splits import DataSplits, stratified_split

__all__ = [
    "AUGMENTATIONS",
    "AugmentDraw",
    "DataSplits",
    "DatasetInfo",
    "apply_augmentation",
    "augment_batch",
    "dataset_info",
    "dataset_names",
    "draw_augmentation",
    "load_data",
    "normalize",
    "register_dataset",
    "stratified_split",
]

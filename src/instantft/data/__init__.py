"""Dataset files -> tensors, drift tasks, checksums."""

from instantft.data.datasets import (
    BASE_DATASETS,
    DRIFT_DATASETS,
    DriftTask,
    ImageSet,
    load_split,
    make_task,
    pretraining_set,
    rotate,
)

__all__ = [
    "BASE_DATASETS",
    "DRIFT_DATASETS",
    "DriftTask",
    "ImageSet",
    "load_split",
    "make_task",
    "pretraining_set",
    "rotate",
]

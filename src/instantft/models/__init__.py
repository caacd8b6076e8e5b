"""The LeNet-5 backbones and their checkpoints."""

from instantft.models.checkpoint import (
    bundled_checkpoint,
    load_checkpoint,
    model_fingerprint,
    read_metadata,
    save_checkpoint,
)
from instantft.models.lenet import (
    ARCH_FOR_DATASET,
    ARCHITECTURES,
    LeNet5,
    LeNetConfig,
    accuracy,
    build,
    pool2x2,
    predict,
)

__all__ = [
    "ARCHITECTURES",
    "ARCH_FOR_DATASET",
    "LeNet5",
    "LeNetConfig",
    "accuracy",
    "build",
    "bundled_checkpoint",
    "load_checkpoint",
    "model_fingerprint",
    "pool2x2",
    "predict",
    "read_metadata",
    "save_checkpoint",
]

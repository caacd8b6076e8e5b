"""The registered backbones by name: an in-tree architecture, optionally with the weights
bundled pre-trained on a base dataset."""

from __future__ import annotations

from instantft.backbones.base import Backbone, TapSpec
from instantft.errors import InstantFTError
from instantft.models import ARCHITECTURES, build, bundled_checkpoint, load_checkpoint


def list_backbones() -> list[str]:
    return list(ARCHITECTURES)


def create_backbone(name: str, pretrained: str | None = None, taps: TapSpec = "auto") -> Backbone:
    """``name`` (``lenet5-mnist``, ``lenet5-svhn``, ``mlp-mnist``, ``resnet8-mnist``) with fresh
    weights, or with the bundled checkpoint pre-trained on ``pretrained`` (``mnist``/``fmnist``)."""
    if name not in ARCHITECTURES:
        raise InstantFTError(f"unknown backbone {name!r}; valid: {', '.join(ARCHITECTURES)}")
    if pretrained is None:
        return Backbone(build(name), taps, copy_model=False)
    family = name.split("-")[0]
    model, _ = load_checkpoint(bundled_checkpoint(pretrained, family), expect_arch=name)
    return Backbone(model, taps, copy_model=False)

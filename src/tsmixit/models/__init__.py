"""Separation models, their registry and the layers they share."""

from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.conv_tasnet import PRESETS, ConvTasNet
from tsmixit.models.registry import (
    ARCHITECTURES,
    DEFAULT_ARCH,
    SeparatorModel,
    build_separator,
    separator_class,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "PRESETS",
    "ConvTasNet",
    "SeparatorModel",
    "build_separator",
    "mixture_consistency",
    "separator_class",
]

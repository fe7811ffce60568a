"""Separation models and the layers they share."""

from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.conv_tasnet import PRESETS, ConvTasNet

__all__ = ["PRESETS", "ConvTasNet", "mixture_consistency"]

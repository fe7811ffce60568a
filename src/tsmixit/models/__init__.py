"""Separation models and the layers they share."""

from tsmixit.models.consistency import mixture_consistency

__all__ = ["mixture_consistency"]

"""Seed-document import path (``from mol.core.adapters import LinearAdapter``)."""

from mol.fusion.adapters import BottleneckAdapter, LinearAdapter

__all__ = ["BottleneckAdapter", "LinearAdapter"]

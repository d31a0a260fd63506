"""Seed-document import path (``from mol.config import MergeConfig``); see :mod:`mol.merge`."""

from mol.merge.api import MergeConfig

__all__ = ["MergeConfig"]

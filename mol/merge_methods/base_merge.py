"""Seed-document import path for the merge API; the code lives in :mod:`mol.merge.api`."""

from mol.merge.api import BaseMerge, MergeConfig, MergedModel

__all__ = ["BaseMerge", "MergeConfig", "MergedModel"]

"""Seed-document import path (``from mol.core.mol_runtime import MoLConfig``)."""

from mol.fusion.runtime import MoLConfig, MoLRuntime

__all__ = ["MoLConfig", "MoLRuntime"]

"""Seed-document import path (``from mol.core.routers import SimpleRouter``)."""

from mol.fusion.routers import SimpleRouter, TokenLevelRouter

__all__ = ["SimpleRouter", "TokenLevelRouter"]

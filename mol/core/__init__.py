"""Import path used by the seed documents (``from mol.core import UniversalArchitectureHandler``)."""

from mol.arch import UniversalArchitectureHandler

__all__ = ["UniversalArchitectureHandler"]

"""What a model is: family detection from ``config.json`` alone.

``detect_architecture("org/model")`` returns an :class:`ArchitectureInfo` saying where the layer stack,
embeddings, final norm and LM head live (dotted paths relative to the head class) and how big they are.
Known families come from a small table; any other model type is handled by
:func:`discover_architecture`, which builds the head class on the meta device and searches it.
"""

from mol.arch._discover import discover_architecture
from mol.arch._handler import UniversalArchitectureHandler, clear_cache, detect_architecture
from mol.arch._info import ArchitectureInfo, RopeInfo
from mol.arch._paths import resolve_module

__all__ = [
    "ArchitectureInfo",
    "RopeInfo",
    "UniversalArchitectureHandler",
    "detect_architecture",
    "discover_architecture",
    "resolve_module",
    "clear_cache",
]

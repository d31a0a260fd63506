"""Exceptions raised by Mango. Each names the thing that went wrong (key, model, file, shape)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MolError",
    "ConfigError",
    "ModelNotFoundError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "CheckpointMismatchError",
    "UnsupportedArchitectureError",
    "closest_match_hint",
]


class MolError(Exception):
    """Base class of every error Mango raises on purpose."""


class ConfigError(MolError, ValueError):
    """A configuration value or key is invalid; the message names the field."""


class ModelNotFoundError(MolError, FileNotFoundError):
    """A model could be found neither as a local directory nor on the hub."""


class UnsafeCheckpointError(MolError):
    """A checkpoint would need pickle (``torch.load``) and the caller did not opt in."""


class CorruptCheckpointError(MolError):
    """A weights file is truncated, has a broken header, or disagrees with its index."""


class CheckpointMismatchError(MolError, ValueError):
    """A weights file does not fit the model: missing or unexpected keys, or wrong shapes."""


class UnsupportedArchitectureError(MolError, ValueError):
    """A model's architecture cannot be used for the requested operation."""


def closest_match_hint(name: str, valid: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid spelling, or ``""``."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""

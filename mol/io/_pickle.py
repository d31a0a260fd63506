"""The one place Mango unpickles weights, and only after the caller passed ``allow_pickle=True``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from mol._errors import CorruptCheckpointError, UnsafeCheckpointError

__all__ = ["load_pickled_state_dict"]


def load_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``torch.save``-d state dict with ``weights_only=True`` (memory-mapped when possible).

    Even when the caller trusts the file, only tensors and plain containers are unpickled:
    anything else (a class instance, a function) is refused.

    Raises:
        UnsafeCheckpointError: the pickle holds objects that ``weights_only`` refuses.
        CorruptCheckpointError: the file is unreadable, or it is not a mapping of name -> tensor.
    """
    # Only the zip format (torch >= 1.6 default) can be memory-mapped.
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} holds pickled objects other than tensors ({_reason(err)}); Mango only "
            "unpickles weights (weights_only=True), even with allow_pickle=True. Convert the "
            "checkpoint to safetensors in an environment you trust"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CorruptCheckpointError(f"cannot read pickle checkpoint {path}: {err}") from err

    if not isinstance(obj, dict):
        raise CorruptCheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of name -> tensor"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CorruptCheckpointError(
                f"{path} is not a state dict of name -> tensor: entry {key!r} is a "
                f"{type(value).__name__}"
            )
    return obj


def _reason(err: pickle.UnpicklingError) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line
    return lines[0] if lines else type(err).__name__

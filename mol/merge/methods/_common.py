"""Input checks shared by the merge methods.

The planner validates configurations before any tensor is read; these checks are the last line
of defence when a method function is called directly, so a wrong call fails with a message that
names the method and the parameter instead of broadcasting silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mol._errors import ConfigError

__all__ = ["check_tensors", "split_base", "check_lengths", "work_dtype"]


def check_tensors(method: str, tensors: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless ``tensors`` is non-empty and all of one shape."""
    if not tensors:
        raise ValueError(f"{method}: no input tensors")
    shape = tensors[0].shape
    for index, tensor in enumerate(tensors):
        if tensor.shape != shape:
            raise ValueError(
                f"{method}: input {index} has shape {tuple(tensor.shape)}, "
                f"input 0 has {tuple(shape)}"
            )


def split_base(
    method: str,
    tensors: Sequence[torch.Tensor],
    base_index: int | None,
    *,
    required: bool,
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Split the inputs into ``(base, non_base)`` (non-base in input order).

    Raises:
        ValueError: the shapes differ, ``base_index`` is out of range, or it is None and
            ``required`` is true.
    """
    check_tensors(method, tensors)
    if base_index is None:
        if required:
            raise ValueError(f"{method}: needs a base model (base_index is None)")
        return None, list(tensors)
    if not 0 <= base_index < len(tensors):
        raise ValueError(
            f"{method}: base_index {base_index} out of range for {len(tensors)} inputs"
        )
    base = tensors[base_index]
    return base, [t for i, t in enumerate(tensors) if i != base_index]


def check_lengths(method: str, expected: int, **values: Sequence[Any]) -> None:
    """Raise ConfigError unless every list in ``values`` has ``expected`` entries."""
    for name, value in values.items():
        if len(value) != expected:
            raise ConfigError(
                f"{method}: parameter {name!r} has {len(value)} values for {expected} inputs"
            )


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (as mergekit does)."""
    return torch.float64 if dtype == torch.float64 else torch.float32

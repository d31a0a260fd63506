"""Passthrough: copy the single input tensor, optionally scaled (used for layer stacking)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol.merge.methods._common import check_lengths, check_tensors
from mol.merge.methods._registry import MethodSpec, ParamSpec, register

__all__ = ["passthrough"]


def passthrough(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    scale: Sequence[float | None],
) -> torch.Tensor:
    """Return the one input, times ``scale`` unless it is None.

    Args:
        tensors: exactly one tensor of shape ``S``.
        scale: one value aligned with ``tensors``; None leaves the tensor untouched (the same
            object is returned, as in mergekit).

    Returns:
        ``S``-shaped tensor.
    """
    check_tensors("passthrough", tensors)
    if len(tensors) != 1:
        raise ValueError(f"passthrough: takes exactly one input, got {len(tensors)}")
    check_lengths("passthrough", 1, scale=scale)
    value = scale[0]
    return tensors[0] if value is None else tensors[0] * value


SPEC = register(
    MethodSpec(
        name="passthrough",
        fn=passthrough,
        params=(
            ParamSpec("scale", float, None, "per_input", "multiply the tensor (None: unchanged)"),
        ),
        base="ignored",
        max_inputs=1,
        reference="mergekit passthrough (arcee-ai/mergekit)",
    )
)

"""Linear merge: a weighted average of the inputs ("model soups").

Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", https://arxiv.org/abs/2203.05482.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol._errors import ConfigError
from mol.merge.methods._common import check_lengths, check_tensors, work_dtype
from mol.merge.methods._registry import REQUIRED, MethodSpec, ParamSpec, register

__all__ = ["linear"]


def linear(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    weight: Sequence[float],
    normalize: bool,
) -> torch.Tensor:
    """``sum_i w_i T_i``, divided by ``sum_i w_i`` when ``normalize``.

    Args:
        tensors: N tensors of shape ``S`` (no base: the method ignores it).
        weight: N weights, aligned with ``tensors``.
        normalize: divide by the sum of the weights.

    Returns:
        ``S``-shaped tensor in the inputs' dtype, accumulated in float32 (float64 inputs stay
        float64), as mergekit does.

    Raises:
        ConfigError: ``normalize`` with weights that sum to 0 (mergekit returns inf/NaN).
    """
    check_tensors("linear", tensors)
    check_lengths("linear", len(tensors), weight=weight)
    first = tensors[0]
    if not first.is_floating_point():
        raise TypeError(f"linear: needs floating-point tensors, got {first.dtype}")
    dtype = work_dtype(first.dtype)
    weights = torch.tensor(list(weight), dtype=dtype, device=first.device)
    result = torch.zeros(first.shape, dtype=dtype, device=first.device)
    for tensor, coefficient in zip(tensors, weights, strict=True):
        result.addcmul_(tensor, coefficient)
    if normalize:
        total = weights.sum()
        if total == 0:
            raise ConfigError(f"linear: weights {list(weight)} sum to 0 and normalize is true")
        result.div_(total)
    return result.to(first.dtype)


SPEC = register(
    MethodSpec(
        name="linear",
        fn=linear,
        params=(
            ParamSpec("weight", float, REQUIRED, "per_input", "weight of this model"),
            ParamSpec("normalize", bool, True, "global", "divide by the sum of the weights"),
        ),
        base="ignored",
        reference="Wortsman et al. 2022, https://arxiv.org/abs/2203.05482",
    )
)

"""Multi-SLERP: barycentric interpolation of several models on a hypersphere.

Goddard 2025, "Multi-SLERP", https://goddard.blog/posts/multislerp-wow-what-a-cool-idea.
With a base, the task vectors ``M_i - B`` are interpolated and the base added back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol._errors import ConfigError
from mol.merge.methods._common import check_lengths, split_base
from mol.merge.methods._registry import REQUIRED, MethodSpec, ParamSpec, register

__all__ = ["multislerp"]


def multislerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    weight: Sequence[float],
    normalize_weights: bool,
    eps: float,
) -> torch.Tensor:
    """Weighted spherical mean of the (flattened) inputs, rescaled to their mean norm.

    The unit vectors are averaged with the weights and normalised (the tangent point), mapped
    to its tangent space, averaged there, mapped back with the exponential map and scaled by
    ``sum_i w_i |x_i|``. A single model is returned as is.

    Args:
        tensors: one or more models, plus optionally the base, all of shape ``S``.
        base_index: the base's position or None.
        weight: one weight per non-base input.
        normalize_weights: divide the weights by their sum.
        eps: added to norms for stability.

    Returns:
        ``S``-shaped tensor.

    Raises:
        ValueError: the weighted mean of the unit vectors is ~0 with more than two models
            (two fall back to linear interpolation, as in mergekit).
        ConfigError: ``normalize_weights`` with weights summing to 0 (mergekit gives NaN).
    """
    base, others = split_base("multislerp", tensors, base_index, required=False)
    if not others:
        raise ValueError("multislerp: needs at least one model besides the base")
    check_lengths("multislerp", len(others), weight=weight)
    if len(others) == 1:
        return others[0]

    stacked = torch.stack(others, dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)

    weights = torch.tensor(list(weight), dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        total = weights.sum()
        if total == 0:
            raise ConfigError(f"multislerp: weights {list(weight)} sum to 0")
        weights = weights / total

    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)

    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] == 2:
            result = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
            return result if base is None else result + base
        raise ValueError(
            "multislerp: the weighted sum of the unit inputs is zero (antipodal models with "
            "balancing weights, e.g. a and -a weighted equally); change the weights"
        )
    mean = mean / mean_norm

    dots = (units * mean).sum(-1, keepdim=True)
    tangents = units - dots * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
    return result if base is None else result + base


SPEC = register(
    MethodSpec(
        name="multislerp",
        fn=multislerp,
        params=(
            ParamSpec("weight", float, REQUIRED, "per_non_base", "weight of this model"),
            ParamSpec("normalize_weights", bool, True, "global", "divide the weights by their sum"),
            ParamSpec("eps", float, 1e-8, "global", "added to norms for numerical stability"),
        ),
        base="optional",
        min_non_base=1,
        reference="Goddard 2025, https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    )
)

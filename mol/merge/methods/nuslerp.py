"""NuSLERP: SLERP between two models (or their task vectors), with weights instead of ``t``.

mergekit's "new SLERP" (https://github.com/arcee-ai/mergekit, docs ``merge_methods.md``):
``t = w_2 / (w_1 + w_2)``; with a base, the two task vectors are interpolated and added back.
Spherical interpolation itself: Shoemake 1985.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol.merge.methods._common import check_lengths, split_base
from mol.merge.methods._registry import REQUIRED, MethodSpec, ParamSpec, register

__all__ = ["nuslerp", "nuslerp_tensors"]


def _unit(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=eps)


def nuslerp_tensors(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    dim: int = -1,
    flatten: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Spherical interpolation from ``v0`` (``t = 0``) to ``v1`` (``t = 1``).

    Vectors are taken along ``dim`` (each other index is its own interpolation), or over the
    whole tensor when ``flatten``. Where ``1 - cos²θ <= eps²`` (colinear or antipodal) the
    result is ``(1 - t) v0 + t v1``. Norms are clamped at 1e-7 when normalising.

    Args:
        t: interpolation factor.
        v0, v1: tensors of one shape ``S``.
        dim: the vector axis when not flattening.
        flatten: one vector per tensor.

    Returns:
        ``S``-shaped tensor.
    """
    shape = v0.shape
    if flatten:
        v0 = v0.reshape(-1)
        v1 = v1.reshape(-1)
    elif dim != -1:
        v0 = v0.transpose(dim, -1)
        v1 = v1.transpose(dim, -1)

    cos_theta = torch.sum(_unit(v0) * _unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    sin_theta = torch.sin(theta)
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    result = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)

    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


def nuslerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    weight: Sequence[float],
    nuslerp_row_wise: bool,
    nuslerp_flatten: bool,
) -> torch.Tensor:
    """Interpolate the two non-base inputs with ``t = w_2 / (w_1 + w_2)`` (0.5 if the sum is ~0).

    Args:
        tensors: two models, plus optionally the base, all of shape ``S``.
        base_index: the base's position or None. With a base, the task vectors
            ``M_i - B`` are interpolated and the base is added back.
        weight: the two non-base weights.
        nuslerp_row_wise: when not flattening, interpolate along dim 0 (column vectors)
            instead of the last dim (row vectors).
        nuslerp_flatten: interpolate whole flattened tensors (default).

    Returns:
        ``S``-shaped tensor.
    """
    base, others = split_base("nuslerp", tensors, base_index, required=False)
    if len(others) != 2:
        raise ValueError(f"nuslerp: needs exactly 2 models besides the base, got {len(others)}")
    check_lengths("nuslerp", 2, weight=weight)
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    dim = 0 if nuslerp_row_wise else -1
    if base is None:
        return nuslerp_tensors(t, others[0], others[1], dim=dim, flatten=nuslerp_flatten)
    return base + nuslerp_tensors(
        t, others[0] - base, others[1] - base, dim=dim, flatten=nuslerp_flatten
    )


SPEC = register(
    MethodSpec(
        name="nuslerp",
        fn=nuslerp,
        params=(
            ParamSpec("weight", float, REQUIRED, "per_non_base", "relative weight of this model"),
            ParamSpec(
                "nuslerp_row_wise", bool, False, "global", "interpolate column vectors (dim 0)"
            ),
            ParamSpec("nuslerp_flatten", bool, True, "global", "interpolate whole tensors"),
        ),
        base="optional",
        min_non_base=2,
        max_non_base=2,
        missing_tensor="passthrough_singleton",
        reference="mergekit nuslerp (arcee-ai/mergekit); Shoemake 1985",
    )
)

"""SLERP: spherical linear interpolation between the base and one other model.

Shoemake 1985, "Animating rotation with quaternion curves" (SIGGRAPH);
https://en.wikipedia.org/wiki/Slerp. Each tensor is treated as one flat vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol.merge.methods._common import split_base, work_dtype
from mol.merge.methods._registry import REQUIRED, MethodSpec, ParamSpec, register

__all__ = ["slerp", "slerp_tensors"]

# Bounds the float32 scratch for huge tensors (embeddings) at 4 MiB per temporary.
_CHUNK = 1024 * 1024


def _chunked_norm(x: torch.Tensor, spans: list[slice], dtype: torch.dtype) -> torch.Tensor:
    # The norm of per-chunk norms: bounded scratch, and mergekit's rounding.
    parts = [torch.linalg.vector_norm(x[:, s].to(dtype), dim=1, keepdim=True) for s in spans]
    return torch.linalg.vector_norm(torch.stack(parts), dim=0)


def slerp_tensors(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    dot_threshold: float = 0.9995,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Interpolate from ``v0`` (``t = 0``) to ``v1`` (``t = 1``) along the great circle.

    The angle is taken between the flattened, normalised tensors; the result interpolates the
    raw tensors, ``sin((1-t)θ)/sinθ · v0 + sin(tθ)/sinθ · v1``. When ``|cos θ| > dot_threshold``
    (colinear or antipodal) it falls back to ``(1-t) v0 + t v1``. A norm ``<= eps`` counts as 1,
    so a zero tensor is treated as orthogonal to everything (mergekit 0.1.5's behaviour).

    Args:
        t: interpolation factor (not clamped).
        v0, v1: tensors of one shape ``S``.

    Returns:
        ``S``-shaped tensor in ``v0``'s dtype, computed in float32 (float64 stays float64).
    """
    dtype = work_dtype(v0.dtype)
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    t_ = torch.tensor(t, dtype=dtype, device=v0.device)
    size = a.shape[1]
    if size == 0:
        return ((1 - t_) * a + t_ * b).reshape(v0.shape).to(v0.dtype)
    spans = [slice(start, start + _CHUNK) for start in range(0, size, _CHUNK)]

    norm_a = _chunked_norm(a, spans, dtype)
    norm_b = _chunked_norm(b, spans, dtype)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    # Normalise before multiplying so the dot product cannot overflow.
    dot = torch.stack(
        [
            ((a[:, s].to(dtype) / norm_a) * (b[:, s].to(dtype) / norm_b)).sum(dim=1, keepdim=True)
            for s in spans
        ]
    )
    dot = dot.sum(dim=0).clamp(-1, 1)

    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t_, torch.sin((1 - t_) * theta) / sin_theta)
    coef_b = torch.where(linear, t_, torch.sin(t_ * theta) / sin_theta)

    result = torch.empty_like(a)
    for s in spans:
        result[:, s] = coef_a * a[:, s].to(dtype) + coef_b * b[:, s].to(dtype)
    return result.reshape(v0.shape)


def slerp(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    t: float,
) -> torch.Tensor:
    """SLERP from the base (``t = 0``) to the other input (``t = 1``).

    Args:
        tensors: exactly 2 tensors of shape ``S``, one of them the base.
        base_index: the base's position (0 or 1).
        t: interpolation factor.

    Returns:
        ``S``-shaped tensor (see :func:`slerp_tensors`).
    """
    base, others = split_base("slerp", tensors, base_index, required=True)
    if len(others) != 1:
        raise ValueError(f"slerp: needs the base and exactly one other input, got {len(tensors)}")
    assert base is not None
    if not base.is_floating_point():
        raise TypeError(f"slerp: needs floating-point tensors, got {base.dtype}")
    return slerp_tensors(t, base, others[0])


SPEC = register(
    MethodSpec(
        name="slerp",
        fn=slerp,
        params=(ParamSpec("t", float, REQUIRED, "global", "0 gives the base, 1 the other model"),),
        base="required",
        min_inputs=2,
        max_inputs=2,
        missing_tensor="passthrough_singleton",
        reference="Shoemake 1985; https://en.wikipedia.org/wiki/Slerp",
    )
)

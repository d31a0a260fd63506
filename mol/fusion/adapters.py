"""Adapters that carry hidden states between models of different widths.

Both adapters start as a *norm-preserving* map: the exact identity when the widths match; an
isometric embedding (orthonormal columns, ``||A x|| = ||x||``) when widening; orthonormal rows
scaled by ``sqrt(in / out)`` when narrowing, which preserves the expected norm of isotropic
inputs (no projection can preserve every norm when narrowing). The matrices are drawn from a
seeded QR decomposition, not a random projection followed by a normalisation layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LinearAdapter", "BottleneckAdapter", "norm_preserving_init_"]


@torch.no_grad()
def norm_preserving_init_(weight: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Fill a ``(out, in)`` weight in place with the norm-preserving map described above.

    Args:
        weight: the ``nn.Linear`` weight, shape ``(out_dim, in_dim)``.
        seed: seeds the orthonormal basis when the widths differ (identity needs none).

    Returns:
        ``weight``.
    """
    out_dim, in_dim = weight.shape
    if out_dim == in_dim:
        return weight.copy_(torch.eye(out_dim, dtype=weight.dtype, device=weight.device))
    generator = torch.Generator().manual_seed(seed)
    big, small = max(out_dim, in_dim), min(out_dim, in_dim)
    q, r = torch.linalg.qr(torch.randn(big, small, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # a unique Q: columns orthonormal
    if out_dim > in_dim:
        matrix = q  # (out, in), orthonormal columns: an isometry
    else:
        matrix = q.T * math.sqrt(in_dim / out_dim)  # (out, in), orthonormal rows, rescaled
    return weight.copy_(matrix.to(dtype=weight.dtype, device=weight.device))


class LinearAdapter(nn.Module):
    """``y = W x + b`` from ``in_dim`` to ``out_dim``, ``(..., in_dim) -> (..., out_dim)``.

    Args:
        in_dim / out_dim: widths.
        init_identity: start norm-preserving (identity for equal widths) with zero bias;
            otherwise PyTorch's default initialisation.
        bias: learn a bias.
        seed: seeds the basis when the widths differ.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        init_identity: bool = True,
        *,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"adapter widths must be positive, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)
        if init_identity:
            norm_preserving_init_(self.proj.weight, seed=seed)
            if bias:
                nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim) -> (..., out_dim)``."""
        return self.proj(x)


class BottleneckAdapter(nn.Module):
    """A linear map plus a zero-initialised residual bottleneck (Houlsby et al. 2019).

    ``y = P x + up(act(down(x)))`` with ``P`` a :class:`LinearAdapter` (norm-preserving start)
    and ``up`` initialised to zero, so a fresh adapter equals ``P``: the identity when
    ``in_dim == out_dim``. Training then learns the residual correction.

    Args:
        in_dim / out_dim: widths.
        bottleneck_dim: width of the residual path.
        activation: ``gelu`` or ``relu``.
        init_identity: as for :class:`LinearAdapter` (the residual always starts at zero).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bottleneck_dim: int = 64,
        *,
        activation: str = "gelu",
        init_identity: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if bottleneck_dim <= 0:
            raise ValueError(f"bottleneck_dim must be positive, got {bottleneck_dim}")
        activations = {"gelu": nn.GELU, "relu": nn.ReLU}
        if activation not in activations:
            raise ValueError(f"activation must be one of {sorted(activations)}, got {activation!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.base = LinearAdapter(in_dim, out_dim, init_identity, seed=seed)
        self.down = nn.Linear(in_dim, bottleneck_dim)
        self.act = activations[activation]()
        self.up = nn.Linear(bottleneck_dim, out_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim) -> (..., out_dim)``."""
        return self.base(x) + self.up(self.act(self.down(x)))

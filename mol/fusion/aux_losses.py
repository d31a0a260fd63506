"""Router auxiliary losses: pure, differentiable functions of router outputs.

All take ``(B, T, E)`` tensors and an optional ``(B, T)`` mask of real (non-padding) tokens,
and average over real tokens only.
"""

from __future__ import annotations

import torch

__all__ = ["load_balancing_loss", "router_entropy", "router_z_loss"]


def _flat(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    if mask is None:
        return x
    return x[mask.reshape(-1).bool()]


def load_balancing_loss(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer load balancing: ``E * sum_e f_e * P_e`` (Fedus et al. 2021, eq. 4).

    ``f_e`` is the fraction of real tokens whose top-1 expert is ``e`` (no gradient) and
    ``P_e`` the mean router probability of ``e`` (differentiable). It is 1 for a perfectly
    balanced router and ``E`` when one expert takes every token with probability 1.

    Args:
        probs: ``(B, T, E)`` router probabilities (softmax, before any top-k).
        mask: ``(B, T)`` real-token mask.

    Returns:
        A scalar tensor.
    """
    p = _flat(probs, mask)
    num_experts = p.shape[-1]
    if p.shape[0] == 0:
        return probs.sum() * 0.0
    top1 = torch.nn.functional.one_hot(p.argmax(dim=-1), num_experts).to(p.dtype)
    return num_experts * (top1.mean(dim=0) * p.mean(dim=0)).sum()


def router_entropy(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean entropy (nats) of the per-token expert distribution; ``log E`` when uniform."""
    p = _flat(probs, mask)
    if p.shape[0] == 0:
        return probs.sum() * 0.0
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean()


def router_z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss: mean of ``logsumexp(logits)^2`` (Zoph et al. 2022, eq. 5)."""
    z = _flat(logits, mask)
    if z.shape[0] == 0:
        return logits.sum() * 0.0
    return torch.logsumexp(z, dim=-1).pow(2).mean()

"""Routers: per layer, how much each expert's output counts for each token.

* :class:`SimpleRouter` decides from a *causal* pooled summary: at position ``t`` it sees the
  mean (or max) of the real tokens ``<= t``, never later ones, so a sequence routes the same
  way during training and during token-by-token generation.
* :class:`TokenLevelRouter` decides per token from that token's hidden state, with optional
  top-k (the k weights renormalised), temperature, and noise during training only.

Both return a :class:`RouterOutput` whose weights sum to 1 over experts for every real token
and are 0 at padding positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mol.fusion.aux_losses import load_balancing_loss, router_entropy, router_z_loss

__all__ = ["RouterOutput", "SimpleRouter", "TokenLevelRouter", "causal_pool", "top_k_renormalise"]


@dataclass
class RouterOutput:
    """Routing for one layer.

    Attributes:
        weights: ``(B, T, E)`` expert weights used to mix (after top-k); 0 at padding.
        probs: ``(B, T, E)`` softmax probabilities before top-k (for the auxiliary losses).
        logits: ``(B, T, E)`` raw logits (for the z-loss).
        mask: ``(B, T)`` bool, real tokens.
        state: the router's running state after these tokens (simple router), for caching.
    """

    weights: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    mask: torch.Tensor
    state: dict | None = None

    def load_balancing_loss(self) -> torch.Tensor:
        """See :func:`mol.fusion.aux_losses.load_balancing_loss`."""
        return load_balancing_loss(self.probs, self.mask)

    def entropy(self) -> torch.Tensor:
        """See :func:`mol.fusion.aux_losses.router_entropy`."""
        return router_entropy(self.probs, self.mask)

    def z_loss(self) -> torch.Tensor:
        """See :func:`mol.fusion.aux_losses.router_z_loss`."""
        return router_z_loss(self.logits, self.mask)

    def expert_weights(self) -> torch.Tensor:
        """``(E,)`` mean weight per expert over real tokens."""
        flat = self.weights[self.mask]
        return flat.mean(dim=0) if flat.numel() else self.weights.new_zeros(self.weights.shape[-1])


def causal_pool(
    hidden: torch.Tensor, mask: torch.Tensor, pooling: str = "mean", state: dict | None = None
) -> tuple[torch.Tensor, dict]:
    """Summary of the real tokens up to each position: ``(B, T, D) -> (B, T, D)``.

    ``mean``: running mean over real tokens ``<= t``; ``max``: running maximum; ``last``: the
    token itself. Positions before the first real token get zeros. ``state`` carries the
    running sums / maxima of earlier chunks (token-by-token generation with a cache); the
    updated state is returned with the pooled tensor.
    """
    m = mask.to(hidden.dtype).unsqueeze(-1)
    state = state or {}
    if pooling == "mean":
        total = (hidden * m).cumsum(dim=1)
        count = m.cumsum(dim=1)
        if "sum" in state:
            total = total + state["sum"].unsqueeze(1)
            count = count + state["count"].unsqueeze(1)
        pooled = total / count.clamp_min(1.0)
        return pooled, {"sum": total[:, -1], "count": count[:, -1]}
    if pooling == "max":
        filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        running = torch.cummax(filled, dim=1).values
        if "max" in state:
            running = torch.maximum(running, state["max"].unsqueeze(1))
        pooled = torch.where(torch.isinf(running), torch.zeros_like(running), running)
        return pooled, {"max": running[:, -1]}
    if pooling == "last":
        return hidden * m, {}
    raise ValueError(f"pooling_type must be 'mean', 'max' or 'last', got {pooling!r}")


def top_k_renormalise(probs: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep each token's ``k`` largest probabilities, renormalised to sum to 1."""
    if k is None or k >= probs.shape[-1]:
        return probs
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k == 1:  # p / p: exactly 1 at the argmax
        return torch.zeros_like(probs).scatter_(-1, probs.argmax(dim=-1, keepdim=True), 1.0)
    values, index = probs.topk(k, dim=-1)
    kept = torch.zeros_like(probs).scatter(-1, index, values)
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(1e-12)


class _Router(nn.Module):
    def __init__(
        self, hidden_dim: int, num_experts: int, top_k: int | None, temperature: float
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k is not None and not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
        self.num_experts, self.top_k, self.temperature = num_experts, top_k, temperature
        self.gate = nn.Linear(hidden_dim, num_experts)
        nn.init.normal_(self.gate.weight, std=0.02)  # near-uniform routing at the start
        nn.init.zeros_(self.gate.bias)

    def _route(self, features: torch.Tensor, mask: torch.Tensor) -> RouterOutput:
        logits = self.gate(features)  # a module call: accelerate's offload hooks run
        if self.temperature != 1.0:
            logits = logits / self.temperature
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(logits.dtype)
        weights = top_k_renormalise(probs, self.top_k) * mask.unsqueeze(-1).to(probs.dtype)
        return RouterOutput(weights, probs, logits, mask)


class SimpleRouter(_Router):
    """Route from a causal pooled summary of the sequence so far.

    Args:
        hidden_dim: width of the hidden states it reads.
        num_experts: experts to weigh.
        pooling_type: ``mean`` (default), ``max`` or ``last`` (see :func:`causal_pool`).
        top_k: keep this many experts per position (None: all).
        temperature: divides the logits (higher: flatter).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_experts: int,
        pooling_type: str = "mean",
        top_k: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(hidden_dim, num_experts, top_k, temperature)
        causal_pool(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), pooling_type)
        self.pooling_type = pooling_type

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None = None, state: dict | None = None
    ) -> RouterOutput:
        """``hidden (B, T, D)``, ``mask (B, T)`` -> :class:`RouterOutput`.

        ``state`` is the pooling state of earlier tokens (generation with a cache); the new
        state is in ``RouterOutput.state``.
        """
        mask = _mask(hidden, mask)
        pooled, new_state = causal_pool(hidden, mask, self.pooling_type, state)
        out = self._route(pooled, mask)
        out.state = new_state
        return out


class TokenLevelRouter(_Router):
    """Route each token from its own hidden state.

    Args:
        hidden_dim / num_experts: sizes.
        top_k: experts per token (default 2; None: all), renormalised.
        temperature: divides the logits.
        noise_std: Gaussian noise added to the logits in training mode only.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_experts: int,
        top_k: int | None = 2,
        temperature: float = 1.0,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__(
            hidden_dim, num_experts, None if top_k is None else min(top_k, num_experts), temperature
        )
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = noise_std

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None = None, state: dict | None = None
    ) -> RouterOutput:
        """``hidden (B, T, D)``, ``mask (B, T)`` -> :class:`RouterOutput` (needs no state)."""
        mask = _mask(hidden, mask)
        features = hidden
        out = self._route(features, mask)
        if self.training and self.noise_std > 0:
            noisy = out.logits + self.noise_std * torch.randn_like(out.logits)
            probs = torch.softmax(noisy.float(), dim=-1).to(noisy.dtype)
            weights = top_k_renormalise(probs, self.top_k) * mask.unsqueeze(-1).to(probs.dtype)
            out = RouterOutput(weights, probs, noisy, mask)
        return out


def _mask(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match hidden {tuple(hidden.shape[:2])}"
        )
    return mask.bool()

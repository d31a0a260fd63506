"""Gate (router) initialisation: pure tensor functions, ``(states, ...) -> (L, E, H)``.

Each MoE layer's router is a matrix ``(E, H)`` whose row ``e`` scores expert ``e`` by a dot
product with the token's hidden state. Following mergekit-moe (Goddard et al., 2024, "Arcee's
MergeKit", section on MoE merging):

* ``hidden``: row = normalise(mean over positive prompts of the base model's input hidden
  state to that layer - the same mean over negative prompts); see :func:`hidden_gate_rows`.
* ``cheap_embed``: the same from token embeddings, identical for every layer; see
  :func:`cheap_embed_rows` (normalised per side before the difference, as mergekit does).
* ``random``: seeded standard normal; ``uniform_random``: seeded uniform in
  ``+-1/sqrt(H)`` (``nn.Linear``'s default init).

:func:`parallel_gate_layers` finds layers whose rows are nearly parallel: their experts would
be indistinguishable to the router.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "normalise_rows",
    "hidden_gate_rows",
    "cheap_embed_rows",
    "random_gates",
    "uniform_random_gates",
    "parallel_gate_layers",
    "PARALLEL_COSINE",
]

PARALLEL_COSINE = 0.99
"""Rows with a cosine similarity at or above this are called nearly parallel."""

_EPS = 1e-8


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """Each vector along the last dimension scaled to unit L2 norm (zero stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=_EPS)


def hidden_gate_rows(positive: torch.Tensor, negative: torch.Tensor | None) -> torch.Tensor:
    """One expert's gate rows from its prompts' pooled hidden states.

    Args:
        positive: ``(P, L, H)`` pooled input hidden state of each layer, per positive prompt.
        negative: ``(N, L, H)`` the same for the negative prompts, or None.

    Returns:
        ``(L, H)``: ``normalise(mean(positive) - mean(negative))``, float32.
    """
    rows = positive.float().mean(dim=0)
    if negative is not None and negative.shape[0]:
        rows = rows - negative.float().mean(dim=0)
    return normalise_rows(rows)


def _embedding_direction(embed: torch.Tensor, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    ids = torch.tensor([i for prompt in token_ids for i in prompt], dtype=torch.long)
    return normalise_rows(embed[ids].float().sum(dim=0))


def cheap_embed_rows(
    embed: torch.Tensor,
    positive_ids: Sequence[Sequence[int]],
    negative_ids: Sequence[Sequence[int]],
    num_layers: int,
) -> torch.Tensor:
    """One expert's gate rows from token embeddings alone (no forward pass).

    Args:
        embed: ``(V, H)`` input embedding matrix.
        positive_ids: token ids of each positive prompt (padding removed).
        negative_ids: token ids of each negative prompt (may be empty).
        num_layers: L, the rows are repeated for every layer.

    Returns:
        ``(L, H)``: ``normalise(normalise(sum of positive embeddings) - normalise(sum of
        negative embeddings))``, float32.
    """
    row = _embedding_direction(embed, positive_ids)
    if any(len(p) for p in negative_ids):
        row = normalise_rows(row - _embedding_direction(embed, negative_ids))
    return row.unsqueeze(0).repeat(num_layers, 1)


def random_gates(num_layers: int, num_experts: int, hidden_size: int, seed: int) -> torch.Tensor:
    """``(L, E, H)`` standard normal gate weights from a private generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_layers, num_experts, hidden_size, generator=generator)


def uniform_random_gates(
    num_layers: int, num_experts: int, hidden_size: int, seed: int
) -> torch.Tensor:
    """``(L, E, H)`` uniform in ``[-1/sqrt(H), 1/sqrt(H))``, seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(hidden_size)
    u = torch.rand(num_layers, num_experts, hidden_size, generator=generator)
    return u * 2 * scale - scale


def parallel_gate_layers(
    gates: torch.Tensor, threshold: float = PARALLEL_COSINE
) -> list[tuple[int, int, int, float]]:
    """Pairs of experts whose gate rows are nearly parallel, per layer.

    Args:
        gates: ``(L, E, H)``.
        threshold: cosine similarity at or above which two rows count as parallel.

    Returns:
        ``(layer, expert_a, expert_b, cosine)`` for every offending pair, a < b.
    """
    unit = normalise_rows(gates.float())
    cos = unit @ unit.transpose(1, 2)  # (L, E, E)
    found = []
    num_experts = gates.shape[1]
    for layer in range(gates.shape[0]):
        for a in range(num_experts):
            for b in range(a + 1, num_experts):
                value = float(cos[layer, a, b])
                if value >= threshold:
                    found.append((layer, a, b, value))
    return found

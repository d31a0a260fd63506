"""The fused layer: experts (blocks of several models) mixed by a router, bridged by adapters."""

from __future__ import annotations

import torch
from torch import nn

from mol.fusion.blocks import ExpertBlock
from mol.fusion.routers import RouterOutput

__all__ = ["FusedLayer"]


class FusedLayer(nn.Module):
    """``h -> h + sum_i w_i * out_i(block_i(in_i(h)) - in_i(h))`` over experts ``i``.

    Each expert sees ``in_i(h)`` at its own width and returns its residual update, mapped back
    to the target width by ``out_i``. Working on the update (rather than ``out_i`` of the
    block's whole output) keeps the target-width residual stream intact when an expert is
    narrower than the target. With one expert, identity adapters and weight 1 the layer is
    exactly that block.

    Sparse execution: without a cache, an expert runs only on the batch rows where some token
    gives it a non-zero weight (rows grouped by expert), and not at all when no row does; with
    top-1 simple routing that is one block per row. With a KV cache (generation) an expert that
    no row uses for the current tokens is skipped too: its inputs are kept in the cache
    (:meth:`~mol.fusion.hf.MoLCache.defer`) and run through the block, filling its KV cache,
    the next time any row chooses it. So a sequence that stays with one expert runs one block
    per layer, and the result is exactly what running every expert would give.

    Args:
        experts: the blocks, one per source.
        in_adapters / out_adapters: target -> expert width and back, one pair per expert.
        router: maps ``(B, T, target)`` hidden states to :class:`RouterOutput` weights.
    """

    def __init__(
        self,
        experts: list[ExpertBlock],
        in_adapters: list[nn.Module],
        out_adapters: list[nn.Module],
        router: nn.Module,
    ) -> None:
        super().__init__()
        if not experts or not len(experts) == len(in_adapters) == len(out_adapters):
            raise ValueError("a fused layer needs one in- and one out-adapter per expert")
        self.experts = nn.ModuleList(experts)
        self.in_adapters = nn.ModuleList(in_adapters)
        self.out_adapters = nn.ModuleList(out_adapters)
        self.router = router

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values=None,
        use_cache: bool = False,
        token_mask: torch.Tensor | None = None,
        router_state: dict | None = None,
        shared: dict | None = None,
    ) -> tuple[torch.Tensor, RouterOutput]:
        """``hidden (B, T, D)`` -> ``(hidden (B, T, D), RouterOutput)``.

        ``attention_mask`` is the 2-D padding mask over past and current tokens;
        ``token_mask (B, T)`` marks the current tokens that are real (default: its last T
        columns). ``router_state`` is the router's state after earlier tokens (with a cache);
        ``shared`` lets blocks reuse masks and rotary embeddings within one forward pass.
        """
        if token_mask is None:
            token_mask = attention_mask[:, -hidden.shape[1] :].bool()
        routing = self.router(hidden, token_mask, router_state)
        out = hidden
        cached = past_key_values is not None  # a cached expert must see every row and token
        used = (routing.weights != 0).any(dim=1)  # (B, E): rows that use each expert
        counts = used.sum(dim=0).tolist()  # one device sync for the whole layer
        for i, (expert, a_in, a_out) in enumerate(
            zip(self.experts, self.in_adapters, self.out_adapters, strict=True)
        ):
            weight = routing.weights[..., i : i + 1]
            if cached and counts[i] == 0:  # unused now: fill its cache when next used
                past_key_values.defer(expert.slot, hidden, position_ids)
            elif cached:
                x = a_in(hidden)
                y = self._run_cached(
                    expert, a_in, x, attention_mask, position_ids, past_key_values, shared
                )
                out = out + weight.to(hidden.dtype) * a_out(y - x)
            elif counts[i] == hidden.shape[0]:
                x = a_in(hidden)
                y = expert(x, attention_mask, position_ids, shared=shared)
                out = out + weight.to(hidden.dtype) * a_out(y - x)
            elif counts[i]:  # run the block on its rows only
                idx = used[:, i].nonzero().squeeze(1)
                pos = position_ids if position_ids.shape[0] == 1 else position_ids[idx]
                x = a_in(hidden[idx])
                y = expert(x, attention_mask[idx], pos, shared=shared)
                update = weight[idx].to(hidden.dtype) * a_out(y - x)
                out = out.index_add(0, idx, update)
        return out, routing

    @staticmethod
    def _run_cached(expert, a_in, x, attention_mask, position_ids, cache, shared) -> torch.Tensor:
        """Run ``expert`` on ``x`` with the cache, first catching up on deferred tokens (kept
        at the target width: ``a_in`` maps them now)."""
        deferred = cache.take_deferred(expert.slot)
        if deferred is None:
            return expert(x, attention_mask, position_ids, cache, True, shared=shared)
        past_h, past_pos = deferred
        pos = torch.cat([past_pos, position_ids.expand(x.shape[0], -1)], dim=1)
        y = expert(torch.cat([a_in(past_h), x], dim=1), attention_mask, pos, cache, True)
        return y[:, -x.shape[1] :]

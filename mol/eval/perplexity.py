"""Perplexity of a causal language model on pre-tokenised blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mol._progress import progress

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, blocks: torch.Tensor, *, batch_size: int = 16, desc: str = "perplexity"
) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of ``blocks``.

    Args:
        model: any module whose ``model(input_ids=...)`` returns an object with ``.logits``
            of shape ``(B, T, V)`` (a transformers causal LM, merged model, MoE or MoL runtime).
        blocks: LongTensor ``(N, T)`` of full blocks (no padding); see ``pack_texts``.
        batch_size: blocks per forward pass.

    Returns:
        The perplexity (float, >= 1).
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must have shape (N, T>=2), got {tuple(blocks.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in progress(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
        batch = blocks[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total_nll / total_tokens)

"""Run gate prompts: tokenise, and pool the base model's per-layer input hidden states.

Prompts go through the model in batches of ``batch_size`` under ``torch.no_grad()``, so memory
is bounded by one batch whatever the number of prompts; a progress bar counts batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol._errors import ConfigError
from mol._progress import progress

__all__ = ["tokenize_prompts", "prompt_hidden_states"]


def _prepare(tokenizer):
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "tokenizer: it has neither a pad nor an eos token, so prompts cannot be batched"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's own special tokens, no padding."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    for prompt, row in zip(prompts, ids, strict=True):
        if not row:
            raise ConfigError(f"prompt {prompt!r} tokenises to nothing")
    return ids


@torch.no_grad()
def prompt_hidden_states(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    pooling: str = "last",
    batch_size: int = 8,
    desc: str = "gate prompts",
) -> torch.Tensor:
    """Each prompt's pooled input hidden state to every decoder layer.

    Args:
        model: a transformers causal LM (eval mode) with L decoder layers.
        tokenizer: its tokenizer (a pad token is borrowed from eos if missing).
        prompts: P texts.
        pooling: ``"last"`` (last real token) or ``"mean"`` (over real tokens).
        batch_size: prompts per forward pass.
        desc: progress bar label.

    Returns:
        ``(P, L, H)`` float32 on the CPU; layer ``i`` is ``hidden_states[i]``, the residual
        stream entering decoder layer ``i``.
    """
    tokenizer = _prepare(tokenizer)
    device = next(model.parameters()).device
    pooled = []
    for start in progress(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        texts = list(prompts[start : start + batch_size])
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        mask = batch["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        if 0 in lengths:
            raise ConfigError(f"gate prompt {texts[lengths.index(0)]!r} tokenises to nothing")
        out = model(**batch, output_hidden_states=True, use_cache=False)
        num_layers = model.config.num_hidden_layers
        states = torch.stack(out.hidden_states[:num_layers], dim=1).float()  # (B, L, T, H)
        if pooling == "last":
            last = mask.sum(dim=1) - 1  # right padding: last real token
            rows = states[torch.arange(states.shape[0], device=device), :, last]
        elif pooling == "mean":
            weights = mask.to(states.dtype)[:, None, :, None]
            rows = (states * weights).sum(dim=2) / weights.sum(dim=2)
        else:
            raise ConfigError(f"hidden_pooling: {pooling!r} is not one of last, mean")
        pooled.append(rows.cpu())
    return torch.cat(pooled, dim=0)

"""Perplexity of any causal language model on pre-tokenised blocks.

The blocks are token ids made once (the zoo's tokenizer), so every model, a transformers
causal LM, a merge, an MoE export or a MoL runtime, is scored on exactly the same tokens.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from mol._errors import ConfigError
from mol._progress import progress

__all__ = ["evaluate_perplexity", "is_mol_checkpoint", "load_for_eval", "perplexity"]


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, blocks: torch.Tensor, *, batch_size: int = 16, desc: str = "perplexity"
) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of ``blocks``.

    Args:
        model: any module whose ``model(input_ids=...)`` returns an object with ``.logits``
            of shape ``(B, T, V)`` (a transformers causal LM, merged model or MoE), or a
            :class:`~mol.fusion.runtime.MoLRuntime` (scored through ``as_hf_model()``).
        blocks: LongTensor ``(N, T)`` of full blocks (no padding); see ``pack_texts``.
        batch_size: blocks per forward pass.

    Returns:
        The perplexity (float, >= 1).
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must have shape (N, T>=2), got {tuple(blocks.shape)}")
    from mol.fusion.runtime import MoLRuntime

    if isinstance(model, MoLRuntime):
        model = model.as_hf_model()  # mirrors the runtime's train/eval mode
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


def is_mol_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a MoL checkpoint directory (it holds ``mol_config.json``)."""
    return (Path(path) / "mol_config.json").is_file()


def load_for_eval(path: str | os.PathLike) -> torch.nn.Module:
    """Load a model directory for scoring: a MoL checkpoint (``mol_config.json``) becomes a
    :class:`~mol.fusion.runtime.MoLRuntime`; anything else (a transformers causal LM, a merge,
    an MoE export) is loaded with :func:`mol.io.load_causal_lm`. Returned in eval mode.

    Raises:
        ModelNotFoundError: ``path`` holds no model.
    """
    if is_mol_checkpoint(path):
        from mol.fusion.runtime import MoLRuntime

        return MoLRuntime.load_checkpoint(path)
    from mol.io import load_causal_lm

    return load_causal_lm(path)


def _vocab_size(model: torch.nn.Module) -> int | None:
    from mol.fusion.runtime import MoLRuntime

    if isinstance(model, MoLRuntime):
        return model.infos[model.primary].vocab_size
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def evaluate_perplexity(
    model_or_path: torch.nn.Module | str | os.PathLike,
    blocks_by_domain: dict[str, torch.Tensor],
    *,
    batch_size: int = 16,
    max_blocks: int | None = None,
    name: str | None = None,
) -> dict[str, float]:
    """Perplexity per domain of a model or model directory (see :func:`load_for_eval`).

    Args:
        model_or_path: a loaded model / MoL runtime, or a directory to load.
        blocks_by_domain: domain -> LongTensor ``(N, T)`` of the same tokenisation for all
            models (e.g. ``zoo.held_out_blocks(domain)``).
        batch_size: blocks per forward pass.
        max_blocks: score at most this many blocks per domain (None: all).
        name: how to call the model in messages (default: its path or class).

    Returns:
        ``{domain: perplexity}`` in the order of ``blocks_by_domain``.

    Raises:
        ConfigError: a block holds a token id outside the model's vocabulary (the blocks were
            made with another tokenizer), or ``max_blocks`` < 1.
    """
    if max_blocks is not None and max_blocks < 1:
        raise ConfigError(f"max_blocks must be >= 1, got {max_blocks}")
    if isinstance(model_or_path, (str, os.PathLike)):
        name = name or str(model_or_path)
        model = load_for_eval(model_or_path)
    else:
        name = name or type(model_or_path).__name__
        model = model_or_path
    vocab = _vocab_size(model)
    out = {}
    for domain, blocks in blocks_by_domain.items():
        if max_blocks is not None:
            blocks = blocks[:max_blocks]
        top = int(blocks.max()) if blocks.numel() else -1
        if vocab is not None and top >= vocab:
            raise ConfigError(
                f"{name}: the {domain} blocks hold token id {top} but the model's vocabulary "
                f"has {vocab} entries; score it on blocks made with its own tokenizer"
            )
        out[domain] = perplexity(model, blocks, batch_size=batch_size, desc=f"{name} on {domain}")
    return out

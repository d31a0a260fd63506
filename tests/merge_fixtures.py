"""Tiny random models for merge tests: same architecture, different weights, saved as HF dirs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def llama_config(**overrides) -> LlamaConfig:
    base = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**{**base, **overrides})


def gpt2_config(**overrides) -> GPT2Config:
    base = dict(n_embd=32, n_layer=3, n_head=4, n_inner=48, vocab_size=96, n_positions=64)
    return GPT2Config(**{**base, **overrides})


def save_random(
    path: Path,
    config,
    seed: int,
    dtype=torch.float32,
    like: Path | None = None,
    noise: float = 0.02,
) -> Path:
    """A random model; with ``like``, that model's weights plus seeded noise (a "fine-tune")."""
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if config.model_type == "llama" else GPT2LMHeadModel
    model = cls(config)
    if like is not None:
        parent = cls.from_pretrained(like, dtype=torch.float32)
        with torch.no_grad():
            for (_, p), (_, q) in zip(
                model.named_parameters(), parent.named_parameters(), strict=True
            ):
                p.copy_(q + noise * torch.randn_like(q))
    model.to(dtype).save_pretrained(path)
    return path


def family(root: Path, config, n_experts: int = 2, dtype=torch.float32) -> dict[str, str]:
    """``{"base": dir, "e1": dir, ...}``: a base and fine-tune-like experts of it."""
    out = {"base": str(save_random(root / "base", config, 0, dtype))}
    for i in range(1, n_experts + 1):
        out[f"e{i}"] = str(save_random(root / f"e{i}", config, i, dtype, like=root / "base"))
    return out

"""Tiny random dense models of four families, and a word-level tokenizer, for MoE assembly tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

WORDS = [
    "def",
    "return",
    "import",
    "class",
    "for",
    "while",
    "if",
    "else",
    "print",
    "self",
    "x",
    "y",
    "z",
    "value",
    "list",
    "dict",
    "once",
    "upon",
    "a",
    "time",
    "there",
    "was",
    "king",
    "queen",
    "forest",
    "river",
    "night",
    "story",
    "happy",
    "sad",
    "the",
    "and",
    "of",
]

_COMMON = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

FAMILY_CONFIGS = {
    "llama": lambda **kw: LlamaConfig(**{**_COMMON, **kw}),
    "mistral": lambda **kw: MistralConfig(**{**_COMMON, "sliding_window": None, **kw}),
    "qwen2": lambda **kw: Qwen2Config(**{**_COMMON, **kw}),
    "qwen3": lambda **kw: Qwen3Config(**{**_COMMON, "head_dim": 8, **kw}),
}


def save_tokenizer(path: Path, *, bos: bool = True) -> Path:
    """A whitespace word-level tokenizer over :data:`WORDS` (ids < 64), with pad/(bos)/eos.

    It adds no special tokens to encoded text either way.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= _COMMON["vocab_size"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(path)
    return path


def save_dense(
    path: Path,
    family: str,
    seed: int,
    *,
    like: Path | None = None,
    mlp_only: bool = True,
    noise: float = 0.05,
    tokenizer: Path | None = None,
    **overrides,
) -> str:
    """A random dense model; with ``like``, a "fine-tune" of it (noise on the MLP, or on all)."""
    torch.manual_seed(seed)
    config = FAMILY_CONFIGS[family](**overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():  # larger weights than the default init: routing matters
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(0.8, 1.2)
        if like is not None:
            parent = AutoModelForCausalLM.from_pretrained(like, dtype=torch.float32)
            for (name, p), (_, q) in zip(
                model.named_parameters(), parent.named_parameters(), strict=True
            ):
                touch = ".mlp." in name or not mlp_only
                p.copy_(q + noise * torch.randn_like(q) if touch else q)
    model.save_pretrained(path)
    if tokenizer is not None:
        PreTrainedTokenizerFast.from_pretrained(tokenizer).save_pretrained(path)
    return str(path)

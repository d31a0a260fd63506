"""Build and train the zoo's models: plain next-token training with AdamW and a cosine schedule."""

from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from mol._progress import progress
from mol.zoo._specs import ModelSpec

__all__ = ["new_model", "set_trainable", "train_lm"]


def new_model(
    spec: ModelSpec, *, vocab_size: int, max_positions: int, bos_id: int, eos_id: int, pad_id: int
) -> PreTrainedModel:
    """A freshly initialised model of ``spec``'s architecture (seeded by ``spec.seed``)."""
    torch.manual_seed(spec.seed)
    ids = dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if spec.arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=spec.hidden,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads or spec.heads,
            intermediate_size=spec.intermediate,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **ids,
        )
        return LlamaForCausalLM(config)
    if spec.arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.intermediate,
            n_positions=max_positions,
            **ids,
        )
        return GPT2LMHeadModel(config)
    raise ValueError(f"zoo model {spec.name!r}: unknown arch {spec.arch!r}")


def set_trainable(model: PreTrainedModel, trainable: str) -> list[torch.nn.Parameter]:
    """Freeze everything except ``trainable`` ("all" or "mlp") and return the trainable params."""
    if trainable not in {"all", "mlp"}:
        raise ValueError(f"trainable must be 'all' or 'mlp', got {trainable!r}")
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(trainable == "all" or ".mlp." in name)
        if param.requires_grad:
            params.append(param)
    if not params:
        raise ValueError(f"no parameter of {type(model).__name__} matches trainable={trainable!r}")
    return params


def _lr_factor(step: int, steps: int) -> float:
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_))


def train_lm(
    model: PreTrainedModel,
    blocks: torch.Tensor,
    params: list[torch.nn.Parameter],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    desc: str,
) -> float:
    """Train on random batches of ``blocks`` ``(N, T)`` for ``steps`` steps; return the last loss.

    Batches are drawn with a generator seeded by ``seed``, so a build is reproducible.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    model.train()
    loss = torch.tensor(float("nan"))
    bar = progress(range(steps), desc=desc, unit="step")
    for _ in bar:
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return loss.item()

"""What each zoo size builds: corpus sizes, model shapes and training budgets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from mol._errors import ConfigError, closest_match_hint

__all__ = ["ZOO_VERSION", "ModelSpec", "ZooSpec", "ZOO_SIZES", "get_spec"]

ZOO_VERSION = "1"


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model: architecture, shape, what it trains on and for how long.

    ``init_from`` names an earlier zoo model to fine-tune; ``trainable="mlp"`` freezes every
    tensor but the feed-forward blocks (so experts share attention, norms and embeddings with
    the base, as MoE assembly assumes).
    """

    name: str
    arch: Literal["llama", "gpt2"]
    domains: tuple[str, ...]
    steps: int
    learning_rate: float
    hidden: int
    layers: int
    heads: int
    intermediate: int
    kv_heads: int | None = None
    init_from: str | None = None
    trainable: Literal["all", "mlp"] = "all"
    seed: int = 0


@dataclass(frozen=True)
class ZooSpec:
    """A zoo size: shared tokenizer and corpus budget plus the models to build, in order."""

    size: str
    vocab_size: int
    block_size: int
    batch_size: int
    max_train_chars: int
    max_held_out_chars: int
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in the manifest, part of the cache fingerprint)."""
        return dataclasses.asdict(self)


def _models(
    base_steps: int,
    expert_steps: int,
    gpt2_steps: int,
    *,
    hidden: int,
    layers: int,
    intermediate: int,
    gpt2_hidden: int,
    gpt2_layers: int,
) -> tuple[ModelSpec, ...]:
    llama = dict(
        arch="llama", hidden=hidden, layers=layers, heads=4, kv_heads=2, intermediate=intermediate
    )
    return (
        ModelSpec(
            "base", domains=("code", "prose"), steps=base_steps, learning_rate=3e-3, seed=1, **llama
        ),
        ModelSpec(
            "expert-code",
            domains=("code",),
            steps=expert_steps,
            learning_rate=2e-3,
            init_from="base",
            trainable="mlp",
            seed=2,
            **llama,
        ),
        ModelSpec(
            "expert-prose",
            domains=("prose",),
            steps=expert_steps,
            learning_rate=2e-3,
            init_from="base",
            trainable="mlp",
            seed=3,
            **llama,
        ),
        ModelSpec(
            "gpt2-code",
            arch="gpt2",
            domains=("code",),
            steps=gpt2_steps,
            learning_rate=3e-3,
            hidden=gpt2_hidden,
            layers=gpt2_layers,
            heads=4,
            intermediate=4 * gpt2_hidden,
            seed=4,
        ),
    )


ZOO_SIZES: dict[str, ZooSpec] = {
    "demo": ZooSpec(
        size="demo",
        vocab_size=2048,
        block_size=128,
        batch_size=16,
        max_train_chars=600_000,
        max_held_out_chars=50_000,
        models=_models(
            450, 250, 400, hidden=128, layers=4, intermediate=384, gpt2_hidden=96, gpt2_layers=3
        ),
    ),
    "micro": ZooSpec(
        size="micro",
        vocab_size=384,
        block_size=32,
        batch_size=8,
        max_train_chars=150_000,
        max_held_out_chars=8_000,
        models=_models(
            300, 150, 150, hidden=32, layers=2, intermediate=64, gpt2_hidden=48, gpt2_layers=2
        ),
    ),
}


def get_spec(size: str) -> ZooSpec:
    """The spec of a zoo size. Raises ConfigError naming the valid sizes."""
    try:
        return ZOO_SIZES[size]
    except KeyError:
        raise ConfigError(
            f"unknown zoo size {size!r}{closest_match_hint(size, ZOO_SIZES)}; "
            f"valid: {', '.join(ZOO_SIZES)}"
        ) from None

"""The training configuration: a typed dataclass that rejects unknown keys and bad values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mol._config import check_keys
from mol._errors import ConfigError

__all__ = ["TrainingConfig", "REPORTERS"]

REPORTERS = ("tensorboard", "wandb")
_PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainingConfig:
    """How to train a MoL runtime's adapters and routers (the seeds' ``TrainingConfig``).

    Attributes:
        learning_rate: AdamW learning rate of the adapters (and of anything else trained).
        router_learning_rate: the routers' learning rate (None: ``learning_rate``).
        weight_decay: AdamW weight decay (not applied to biases and norms).
        batch_size: blocks per micro-batch.
        block_size: tokens per block when text is packed.
        max_epochs: passes over the training data (``max_steps`` wins when set).
        max_steps: optimizer steps in all (None: ``max_epochs`` worth).
        warmup_steps: linear warm-up, then linear decay to 0 at the last step.
        gradient_accumulation_steps: micro-batches per optimizer step.
        gradient_clip_norm: clip the global gradient norm (None: no clipping).
        entropy_penalty_coeff: weight of the mean router entropy (positive: decisive routing).
        load_balancing_coeff: weight of the Switch load-balancing loss.
        router_z_loss_coeff: weight of the ST-MoE router z-loss.
        freeze_experts: keep every expert block's weights fixed (the default).
        trainable_parameters: glob patterns over parameter names; when given, exactly the
            matching parameters train (required for a plain transformers model, e.g.
            ``["*.gate.weight"]`` for the gates of an assembled MoE).
        train_embeddings: also train the primary's token (and position) embeddings.
        train_lm_head: also train the primary's final norm and LM head.
        use_gradient_checkpointing: recompute fused layers in the backward pass (less memory).
        use_safetensors: checkpoints are safetensors (the only format; False is an error).
        output_dir: where checkpoints (``checkpoint-<step>``, ``best``, ``final``) go.
        eval_steps: evaluate every this many steps (None: at the end only).
        save_steps: write a resumable checkpoint every this many steps (None: never).
        logging_steps: report to the tracker every this many steps.
        seed: seeds data order, initialisation noise and router noise.
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (accelerate's autocast).
        report_to: None, ``tensorboard`` or ``wandb`` (imported only when asked).
        run_name: the tracker's run name (None: the output directory's name).
    """

    learning_rate: float = 1e-4
    router_learning_rate: float | None = None
    weight_decay: float = 0.01
    batch_size: int = 8
    block_size: int = 128
    max_epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    gradient_clip_norm: float | None = 1.0
    entropy_penalty_coeff: float = 0.0
    load_balancing_coeff: float = 0.0
    router_z_loss_coeff: float = 0.0
    freeze_experts: bool = True
    trainable_parameters: list[str] | None = None
    train_embeddings: bool = False
    train_lm_head: bool = False
    use_gradient_checkpointing: bool = False
    use_safetensors: bool = True
    output_dir: str = "./mol-training"
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int = 10
    seed: int = 42
    mixed_precision: str = "no"
    report_to: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        positive = ("learning_rate", "batch_size", "block_size", "max_epochs")
        positive += ("gradient_accumulation_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("router_learning_rate", "max_steps", "eval_steps", "save_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive or None, got {value!r}")
        if self.gradient_clip_norm is not None and self.gradient_clip_norm <= 0:
            raise ConfigError(
                f"gradient_clip_norm must be positive or None, got {self.gradient_clip_norm!r}"
            )
        non_negative = ("weight_decay", "warmup_steps", "entropy_penalty_coeff")
        non_negative += ("load_balancing_coeff", "router_z_loss_coeff")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.use_safetensors:
            raise ConfigError("use_safetensors=False: checkpoints are written as safetensors only")
        if self.mixed_precision not in _PRECISIONS:
            raise ConfigError(
                f"mixed_precision must be one of {', '.join(_PRECISIONS)}, got {self.mixed_precision!r}"
            )
        if self.report_to is not None and self.report_to not in REPORTERS:
            raise ConfigError(
                f"report_to must be None or one of {', '.join(REPORTERS)}, got {self.report_to!r}"
            )

    @property
    def router_lr(self) -> float:
        """The routers' learning rate."""
        return (
            self.router_learning_rate
            if self.router_learning_rate is not None
            else self.learning_rate
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str = "training") -> TrainingConfig:
        """Build from a parsed mapping; unknown keys are errors naming the key."""
        valid = [f.name for f in dataclasses.fields(cls)]
        check_keys(raw, valid, path)
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (saved with every checkpoint)."""
        return dataclasses.asdict(self)

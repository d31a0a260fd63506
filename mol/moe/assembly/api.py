"""The seed's Python API: ``MixtralForCausalLMMergingAlgorithm(...).run(pool)``.

Both algorithms write a standard checkpoint with :func:`~mol.moe.assembly.build_moe` (into
``save_checkpoint``, or a temporary directory removed after loading) and load it back with
``AutoModelForCausalLM``, so the returned model is exactly what any transformers user gets.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mol._errors import ConfigError, closest_match_hint
from mol.moe.assembly.config import ExpertConfig, MoEConfig
from mol.moe.assembly.export import build_moe
from mol.moe.assembly.pool import CausalLMPool

__all__ = [
    "MixtralForCausalLMMergingAlgorithm",
    "MixtralMoEMergingAlgorithm",
    "ParameterCount",
    "count_parameters",
    "print_parameters",
]


class MixtralForCausalLMMergingAlgorithm:
    """Dense fine-tunes of one base -> one sparse MoE causal LM (Mixtral / Qwen-MoE).

    Args:
        experts_per_token: router top-k.
        save_checkpoint: directory to write the checkpoint to; None keeps only the model.
        gate_mode: ``random`` (default: the seed API passes no prompts), ``uniform_random``,
            ``hidden`` or ``cheap_embed`` (these two need ``positive_prompts``).
        positive_prompts: expert name -> prompts that should route to it.
        negative_prompts: expert name -> prompts that should not.
        architecture: ``mixtral``, ``qwen2_moe``, ``qwen3_moe``; None infers it from the base.
        hidden_pooling, shared_parts, seed: see :class:`~mol.moe.assembly.MoEConfig`.
        layout: ``fused`` (default: the installed transformers class's own parameter names
            and shapes) or ``per_expert`` (one tensor per expert, for transformers 4 and
            serving engines); see :class:`~mol.moe.assembly.MoEConfig`.
        overwrite: replace a non-empty ``save_checkpoint``.
        device: where the ``hidden`` gate prompts run.
    """

    def __init__(
        self,
        experts_per_token: int = 2,
        save_checkpoint: str | Path | None = None,
        *,
        gate_mode: str = "random",
        positive_prompts: Mapping[str, Sequence[str]] | None = None,
        negative_prompts: Mapping[str, Sequence[str]] | None = None,
        architecture: str | None = None,
        hidden_pooling: str = "last",
        shared_parts: str = "base",
        seed: int = 0,
        layout: str = "fused",
        overwrite: bool = False,
        device: str = "cpu",
    ) -> None:
        self.experts_per_token = experts_per_token
        self.save_checkpoint = save_checkpoint
        self.gate_mode = gate_mode
        self.positive_prompts = dict(positive_prompts or {})
        self.negative_prompts = dict(negative_prompts or {})
        self.architecture = architecture
        self.hidden_pooling = hidden_pooling
        self.shared_parts = shared_parts
        self.seed = seed
        self.layout = layout
        self.overwrite = overwrite
        self.device = device

    def config_for(self, pool: CausalLMPool) -> MoEConfig:
        """The :class:`MoEConfig` this algorithm runs on ``pool``.

        Raises:
            ConfigError: prompts given for a name that is not an expert of the pool, or any
                invalid setting (see :class:`MoEConfig`).
        """
        names = pool.expert_names
        for what, prompts in (
            ("positive_prompts", self.positive_prompts),
            ("negative_prompts", self.negative_prompts),
        ):
            for name in prompts:
                if name not in names:
                    raise ConfigError(
                        f"{what}.{name}: not an expert of the pool"
                        f"{closest_match_hint(name, names)}; experts: {', '.join(names)}"
                    )
        experts = tuple(
            ExpertConfig(
                source_model=pool.models[name],
                positive_prompts=tuple(self.positive_prompts.get(name, ())),
                negative_prompts=tuple(self.negative_prompts.get(name, ())),
            )
            for name in names
        )
        return MoEConfig(
            base_model=pool.base_model,
            experts=experts,
            experts_per_token=self.experts_per_token,
            gate_mode=self.gate_mode,
            architecture=self.architecture,
            dtype=pool.dtype,
            hidden_pooling=self.hidden_pooling,
            shared_parts=self.shared_parts,
            seed=self.seed,
            tokenizer=pool.tokenizer,
            layout=self.layout,
        )

    def run(self, pool: CausalLMPool):
        """Assemble, save when ``save_checkpoint`` is set, and return the loaded MoE model."""
        from transformers import AutoModelForCausalLM

        config = self.config_for(pool)
        dtype = getattr(torch, config.dtype) if config.dtype else "auto"
        if self.save_checkpoint is not None:
            result = build_moe(
                config, self.save_checkpoint, overwrite=self.overwrite, device=self.device
            )
            return AutoModelForCausalLM.from_pretrained(result.path, dtype=dtype).eval()
        with tempfile.TemporaryDirectory(prefix="mol-moe-") as tmp:
            result = build_moe(config, Path(tmp) / "moe", device=self.device)
            model = AutoModelForCausalLM.from_pretrained(result.path, dtype=dtype).eval()
            # Loaded tensors may still be memory-mapped views of the files about to go.
            for param in model.parameters():
                param.data = param.data.clone()
            return model


class MixtralMoEMergingAlgorithm(MixtralForCausalLMMergingAlgorithm):
    """As :class:`MixtralForCausalLMMergingAlgorithm`, but ``run`` returns the backbone
    (``MixtralModel`` / ``Qwen2MoeModel``...: no LM head), as in the seed's FusionBench API.
    A ``save_checkpoint`` still holds the whole causal LM."""

    def run(self, pool: CausalLMPool):
        """Assemble (and save, if asked) and return the MoE backbone without its head."""
        return super().run(pool).model


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of an MoE model.

    Attributes:
        total: every parameter.
        active: parameters used per token (experts counted ``top_k / num_experts``).
        expert: parameters in routed experts.
    """

    total: int
    active: int
    expert: int


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Total and active-per-token parameters of a transformers MoE (or dense) model.

    Routed experts are the parameters under a ``.experts.`` module whose first dimension is
    ``num_experts``; a dense model has none, so ``active == total``.
    """
    config = getattr(model, "config", None)
    num = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    total = expert = 0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if num and ".experts." in f".{name}" and param.shape[0] == num:
            expert += param.numel()
    active = total if not num else total - expert + expert * top_k // num
    return ParameterCount(total, active, expert)


def print_parameters(model: torch.nn.Module) -> ParameterCount:
    """Print total and active-per-token parameter counts; return them."""
    counts = count_parameters(model)
    share = 100.0 * counts.active / counts.total if counts.total else 0.0
    print(
        f"total parameters: {counts.total:,} | active per token: {counts.active:,} "
        f"({share:.1f}%) | in routed experts: {counts.expert:,}"
    )
    return counts

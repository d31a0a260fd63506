"""The ``mol-merge moe`` configuration: typed, frozen dataclasses that reject unknown keys.

A YAML file looks like mergekit-moe's::

    base_model: path/to/base
    architecture: mixtral          # or qwen2_moe / qwen3_moe; inferred from the base if left out
    gate_mode: hidden              # hidden | cheap_embed | random | uniform_random
    experts_per_token: 2
    dtype: bfloat16
    layout: fused                  # fused (transformers 5) | per_expert (transformers 4, engines)
    experts:
      - source_model: path/to/code-expert
        positive_prompts: ["def main():"]
        negative_prompts: ["Once upon a time"]
      - source_model: path/to/prose-expert
        positive_prompts: ["Once upon a time"]

Keys mergekit-moe has and we do not (``shared_experts``, ``noise_scale``, ``residual_scale``,
quantised loading) are errors like any other unknown key, never silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from mol._config import check_keys as _check_keys
from mol._config import read_yaml
from mol._config import within as _within
from mol._errors import ConfigError, closest_match_hint

__all__ = [
    "Architecture",
    "GateMode",
    "HiddenPooling",
    "SharedParts",
    "Layout",
    "ExpertConfig",
    "MoEConfig",
    "load_moe_config",
]

Architecture = Literal["mixtral", "qwen2_moe", "qwen3_moe"]
GateMode = Literal["hidden", "cheap_embed", "random", "uniform_random"]
HiddenPooling = Literal["last", "mean"]
SharedParts = Literal["base", "average"]
DType = Literal["float32", "float16", "bfloat16"]
Layout = Literal["fused", "per_expert"]

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
GATE_MODES: tuple[str, ...] = get_args(GateMode)
LAYOUTS: tuple[str, ...] = get_args(Layout)
PROMPT_GATE_MODES = ("hidden", "cheap_embed")


def _choice(value: Any, valid: Sequence[str], name: str) -> None:
    if value not in valid:
        hint = closest_match_hint(str(value), valid) if isinstance(value, str) else ""
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(valid)}{hint}")


def _prompts(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    for i, prompt in enumerate(value):
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"{name}[{i}]: expected a non-empty string, got {prompt!r}")
    return tuple(value)


def _positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


@dataclass(frozen=True)
class ExpertConfig:
    """One dense model that becomes one expert of every MoE layer.

    Attributes:
        source_model: local directory or hub id of the dense fine-tune.
        positive_prompts: text this expert should be routed to (``hidden``/``cheap_embed``).
        negative_prompts: text it should not be routed to; subtracted from the positive mean.
    """

    source_model: str
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.source_model, str) or not self.source_model:
            raise ConfigError(f"source_model: expected a model path, got {self.source_model!r}")
        object.__setattr__(
            self, "positive_prompts", _prompts(self.positive_prompts, "positive_prompts")
        )
        object.__setattr__(
            self, "negative_prompts", _prompts(self.negative_prompts, "negative_prompts")
        )


@dataclass(frozen=True)
class MoEConfig:
    """A whole MoE assembly.

    Attributes:
        base_model: the dense model whose attention, norms, embeddings and head are kept, and
            which runs the ``hidden`` gate prompts.
        experts: one entry per expert, in router order (expert ``i`` is row ``i`` of each gate).
        experts_per_token: top-k of the router; 1 <= k <= len(experts).
        gate_mode: ``hidden`` (base model's layer inputs on the prompts), ``cheap_embed``
            (token embeddings of the prompts), ``random`` (seeded normal), ``uniform_random``
            (seeded uniform in +-1/sqrt(hidden_size), like a fresh ``nn.Linear``).
        architecture: target class family; None infers it from the base model (Llama and
            Mistral -> ``mixtral``, Qwen2 -> ``qwen2_moe``, Qwen3 -> ``qwen3_moe``).
        dtype: output dtype; None keeps the base checkpoint's.
        hidden_pooling: per prompt, the ``last`` token's hidden state or the ``mean`` over its
            tokens (padding excluded either way).
        shared_parts: attention, norms, embeddings and head from the ``base`` or the
            ``average`` over the experts.
        seed: for the random gate modes.
        tokenizer: tokenizer for the prompts; None uses the base model's.
        prompt_batch_size: prompts per forward pass in ``hidden`` mode (bounds memory).
        layout: expert tensors on disk. ``fused``: exactly the installed transformers class's
            own parameters (``mlp.experts.gate_up_proj`` ``(E, 2*I, H)``,
            ``mlp.experts.down_proj`` ``(E, H, I)``, router ``mlp.gate.weight``), what
            transformers 5 loads without conversion. ``per_expert``: one ``nn.Linear`` tensor
            per expert and projection (Mixtral ``block_sparse_moe.experts.{e}.w1|w3|w2``, Qwen
            ``mlp.experts.{e}.gate_proj|up_proj|down_proj``), for transformers 4 and serving
            engines. See :mod:`mol.moe.assembly.layout`.
    """

    base_model: str
    experts: tuple[ExpertConfig, ...]
    experts_per_token: int = 2
    gate_mode: GateMode = "hidden"
    architecture: Architecture | None = None
    dtype: DType | None = None
    hidden_pooling: HiddenPooling = "last"
    shared_parts: SharedParts = "base"
    seed: int = 0
    tokenizer: str | None = None
    prompt_batch_size: int = 8
    layout: Layout = "fused"

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ConfigError(f"base_model: expected a model path, got {self.base_model!r}")
        experts = tuple(self.experts)
        if not experts:
            raise ConfigError("experts: at least one expert is required")
        object.__setattr__(self, "experts", experts)
        _positive_int(self.experts_per_token, "experts_per_token")
        if self.experts_per_token > len(experts):
            raise ConfigError(
                f"experts_per_token: {self.experts_per_token} is more than the "
                f"{len(experts)} experts a router can choose from"
            )
        _choice(self.gate_mode, GATE_MODES, "gate_mode")
        if self.architecture is not None:
            _choice(self.architecture, ARCHITECTURES, "architecture")
        if self.dtype is not None:
            _choice(self.dtype, get_args(DType), "dtype")
        _choice(self.hidden_pooling, get_args(HiddenPooling), "hidden_pooling")
        _choice(self.shared_parts, get_args(SharedParts), "shared_parts")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed: expected an integer, got {self.seed!r}")
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise ConfigError(f"tokenizer: expected a path, got {self.tokenizer!r}")
        _positive_int(self.prompt_batch_size, "prompt_batch_size")
        _choice(self.layout, LAYOUTS, "layout")
        if self.gate_mode in PROMPT_GATE_MODES:
            for i, expert in enumerate(experts):
                if not expert.positive_prompts:
                    raise ConfigError(
                        f"experts[{i}].positive_prompts: gate_mode {self.gate_mode!r} needs at "
                        f"least one positive prompt per expert ({expert.source_model})"
                    )


_TOP_KEYS = tuple(f.name for f in fields(MoEConfig))
_EXPERT_KEYS = tuple(f.name for f in fields(ExpertConfig))


def _read(source: str | os.PathLike | Mapping[str, Any]) -> Any:
    return read_yaml(source, "base_model: ..., experts: ...")


def load_moe_config(source: str | os.PathLike | Mapping[str, Any]) -> MoEConfig:
    """Load and validate an MoE assembly configuration.

    Args:
        source: a YAML file path, YAML text, or an already-parsed mapping.

    Returns:
        The validated :class:`MoEConfig`.

    Raises:
        ConfigError: an unknown key (named, with the closest valid spelling), a missing
            required key, or an invalid value (the message names the field).
    """
    raw = _check_keys(_read(source), _TOP_KEYS, "")
    for key in ("base_model", "experts"):
        if key not in raw:
            raise ConfigError(f"{key}: required")
    raw_experts = raw["experts"]
    if not isinstance(raw_experts, Sequence) or isinstance(raw_experts, str):
        raise ConfigError(f"experts: expected a list of experts, got {raw_experts!r}")
    experts = []
    for i, entry in enumerate(raw_experts):
        path = f"experts[{i}]"
        entry = _check_keys(entry, _EXPERT_KEYS, path)
        if "source_model" not in entry:
            raise ConfigError(f"{path}.source_model: required")
        experts.append(_within(path, lambda e=entry: ExpertConfig(**e)))
    kwargs = {key: value for key, value in raw.items() if key != "experts"}
    return MoEConfig(experts=tuple(experts), **kwargs)

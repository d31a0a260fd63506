"""Build an MoE checkpoint from dense experts: check everything, compute gates, stream it out.

Reads top to bottom: :func:`plan_moe` (resolve models, check families and shapes, build the
target config, check our tensor list against the target class) -> :func:`compute_gates` ->
:func:`build_moe` (write config, tokenizer and safetensors into an atomic output directory).
Nothing is written until every check has passed and the gates exist; on any failure the output
directory is left as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mol._errors import CheckpointMismatchError, ConfigError, UnsupportedArchitectureError
from mol._progress import progress
from mol.io import (
    LazyCheckpoint,
    PlannedTensor,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    resolve_model_dir,
)
from mol.moe.assembly import gates as gate_math
from mol.moe.assembly.config import ARCHITECTURES, MoEConfig
from mol.moe.assembly.layout import (
    DENSE_MLP_PROJECTIONS,
    TARGETS,
    TargetSpec,
    dense_mlp_name,
    is_dense_mlp,
    layer_expert_tensors,
    router_checkpoint_name,
    shared_expert_checkpoint_tensors,
)

__all__ = ["MoEPlan", "AssemblyResult", "plan_moe", "compute_gates", "build_moe"]

logger = logging.getLogger("mol")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Config fields every model must agree on (they fix tensor shapes or the computation).
_SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "hidden_act",
    "tie_word_embeddings",
)

# Dense config fields carried into the MoE config unchanged, when the dense model has them.
_CARRIED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "attention_dropout",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "attention_bias",
)


@dataclass(frozen=True)
class MoEPlan:
    """Everything checked and decided before any tensor is read or written.

    Attributes:
        config: the validated assembly configuration.
        target: the target family's layout.
        base_dir: resolved base model directory.
        expert_dirs: resolved expert directories, in router order.
        out_config: the target transformers config (``num_experts``, top-k... set).
        dtype: output dtype.
        tensors: the checkpoint tensors to write (in ``config.layout``), in order, as announced
            to the writer.
        allow_pickle: whether trusted ``.bin`` inputs may be read.
    """

    config: MoEConfig
    target: TargetSpec
    base_dir: Path
    expert_dirs: tuple[Path, ...]
    out_config: object
    dtype: torch.dtype
    tensors: tuple[PlannedTensor, ...]
    allow_pickle: bool = False


@dataclass(frozen=True)
class AssemblyResult:
    """What :func:`build_moe` wrote."""

    path: Path
    architecture: str
    num_experts: int
    num_tensors: int
    num_bytes: int
    seconds: float
    parallel_pairs: tuple[tuple[int, int, int, float], ...]


# --- planning ----------------------------------------------------------------------------------


def _load_config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def _target_for(config: MoEConfig, base_type: str) -> TargetSpec:
    if config.architecture is not None:
        target = TARGETS[config.architecture]
        if base_type not in target.dense_model_types:
            raise UnsupportedArchitectureError(
                f"architecture {config.architecture!r} takes experts of the "
                f"{'/'.join(target.dense_model_types)} family; the base model "
                f"{config.base_model} is {base_type!r}"
            )
        return target
    for target in TARGETS.values():
        if base_type in target.dense_model_types:
            return target
    families = sorted(t for spec in TARGETS.values() for t in spec.dense_model_types)
    raise UnsupportedArchitectureError(
        f"base model {config.base_model} is {base_type!r}; MoE assembly takes "
        f"{', '.join(families)} models (targets: {', '.join(ARCHITECTURES)})"
    )


def _check_same(base_cfg, other_cfg, name: str, base_name: str) -> None:
    if other_cfg.model_type != base_cfg.model_type:
        raise UnsupportedArchitectureError(
            f"expert {name} is {other_cfg.model_type!r} but the base model {base_name} is "
            f"{base_cfg.model_type!r}: all experts must share the base's architecture"
        )
    for key in _SHAPE_FIELDS:
        a, b = getattr(base_cfg, key, None), getattr(other_cfg, key, None)
        if a != b:
            raise CheckpointMismatchError(
                f"expert {name} has {key}={b!r} but the base model {base_name} has {a!r}"
            )


def _check_supported(target: TargetSpec, cfg, name: str) -> None:
    if target.name == "mixtral":
        for flag in ("attention_bias", "mlp_bias"):
            if getattr(cfg, flag, False):
                raise UnsupportedArchitectureError(
                    f"{name} has {flag}=True; Mixtral has no biases there, so it cannot hold "
                    f"this model exactly"
                )
    if getattr(cfg, "mlp_bias", False):
        raise UnsupportedArchitectureError(f"{name} has mlp_bias=True; MoE experts have none")


def _build_out_config(target: TargetSpec, base_cfg, config: MoEConfig, dtype: torch.dtype):
    import transformers

    cls = {
        "mixtral": transformers.MixtralConfig,
        "qwen2_moe": transformers.Qwen2MoeConfig,
        "qwen3_moe": transformers.Qwen3MoeConfig,
    }[target.name]
    base = base_cfg.to_dict()
    kwargs = {k: base[k] for k in _CARRIED_FIELDS if k in base}
    if kwargs.get("head_dim") is None:
        kwargs["head_dim"] = base_cfg.hidden_size // base_cfg.num_attention_heads
    n = len(config.experts)
    kwargs["num_experts_per_tok"] = config.experts_per_token
    if target.name == "mixtral":
        kwargs.update(
            intermediate_size=base_cfg.intermediate_size,
            num_local_experts=n,
            router_jitter_noise=0.0,
            output_router_logits=False,
        )
        for key in ("use_sliding_window", "max_window_layers", "layer_types", "attention_bias"):
            kwargs.pop(key, None)
    else:
        kwargs.update(
            intermediate_size=base_cfg.intermediate_size,
            moe_intermediate_size=base_cfg.intermediate_size,
            num_experts=n,
            norm_topk_prob=True,  # top-k weights sum to 1, as in Mixtral
            decoder_sparse_step=1,
            mlp_only_layers=[],
            output_router_logits=False,
        )
        if target.has_shared_expert:
            kwargs["shared_expert_intermediate_size"] = base_cfg.intermediate_size
            kwargs["qkv_bias"] = True
            kwargs.pop("attention_bias", None)
    out = cls(**kwargs)
    out.architectures = [target.class_name]
    out.dtype = dtype
    return out


def _expected_checkpoint(target: TargetSpec, out_config, layout: str) -> dict[str, tuple[int, ...]]:
    """Checkpoint names and shapes the target class loads, derived from the class itself.

    ``fused``: the class's meta-device ``state_dict()`` as it is (a tied head excluded).
    ``per_expert``: the same with each layer's fused experts and router renamed and split the
    way transformers' checkpoint conversion maps them.
    """
    import transformers

    cls = getattr(transformers, target.class_name)
    with torch.device("meta"):
        model = cls(out_config)
    expected: dict[str, tuple[int, ...]] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and out_config.tie_word_embeddings:
            continue
        shape = tuple(tensor.shape)
        if layout == "fused":
            expected[name] = shape
        elif name.endswith(".mlp.experts.gate_up_proj"):
            layer = name.removesuffix(".mlp.experts.gate_up_proj")
            num, two_i, hidden = shape
            mlp = {
                "gate_proj": (two_i // 2, hidden),
                "up_proj": (two_i // 2, hidden),
            }
            for e in range(num):
                for p, s in mlp.items():
                    suffix = target.checkpoint_names[p]
                    expected[f"{layer}.{target.moe_prefix}.experts.{e}.{suffix}.weight"] = s
        elif name.endswith(".mlp.experts.down_proj"):
            layer = name.removesuffix(".mlp.experts.down_proj")
            num = shape[0]
            suffix = target.checkpoint_names["down_proj"]
            for e in range(num):
                expected[f"{layer}.{target.moe_prefix}.experts.{e}.{suffix}.weight"] = shape[1:]
        elif name.endswith(".mlp.gate.weight"):
            expected[name.replace(".mlp.", f".{target.moe_prefix}.")] = shape
        else:
            expected[name] = shape
    return expected


def plan_moe(config: MoEConfig, *, allow_pickle: bool = False) -> MoEPlan:
    """Check the models against each other and the target class; decide every output tensor.

    Raises:
        ModelNotFoundError: a model cannot be found.
        UnsupportedArchitectureError: a family that does not fit ``architecture`` (or no MoE
            target at all), experts of another architecture than the base, or biases the
            target cannot hold.
        CheckpointMismatchError: an expert's config or a tensor's shape differs from the
            base's, or a tensor the target needs is missing.
    """
    base_dir = resolve_model_dir(config.base_model)
    expert_dirs = tuple(resolve_model_dir(e.source_model) for e in config.experts)
    base_cfg = _load_config(base_dir)
    target = _target_for(config, base_cfg.model_type)
    _check_supported(target, base_cfg, f"base model {config.base_model}")
    for expert, path in zip(config.experts, expert_dirs, strict=True):
        _check_same(base_cfg, _load_config(path), expert.source_model, config.base_model)

    with LazyCheckpoint(base_dir, allow_pickle=allow_pickle) as base:
        base_shapes = {name: base.shape(name) for name in base.keys()}
        embed_dtype = base.dtype("model.embed_tokens.weight")
    for expert, path in zip(config.experts, expert_dirs, strict=True):
        with LazyCheckpoint(path, allow_pickle=allow_pickle) as ckpt:
            for name, shape in base_shapes.items():
                if name not in ckpt:
                    raise CheckpointMismatchError(
                        f"expert {expert.source_model} has no tensor {name!r} (the base has it)"
                    )
                if ckpt.shape(name) != shape:
                    raise CheckpointMismatchError(
                        f"expert {expert.source_model}: tensor {name!r} is "
                        f"{ckpt.shape(name)}, the base's is {shape}"
                    )

    dtype = _DTYPES[config.dtype] if config.dtype else embed_dtype
    out_config = _build_out_config(target, base_cfg, config, dtype)
    tensors = _plan_tensors(
        target, base_cfg, base_shapes, len(config.experts), dtype, config.layout
    )
    expected = _expected_checkpoint(target, out_config, config.layout)
    planned = {t.name: t.shape for t in tensors}
    missing = sorted(set(expected) - set(planned))
    extra = sorted(set(planned) - set(expected))
    if missing or extra:
        raise CheckpointMismatchError(
            f"the dense models do not fit {target.class_name}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for name, shape in planned.items():
        if expected[name] != shape:
            raise CheckpointMismatchError(
                f"{name}: {target.class_name} expects {expected[name]}, the experts give {shape}"
            )
    return MoEPlan(
        config, target, base_dir, expert_dirs, out_config, dtype, tuple(tensors), allow_pickle
    )


def _plan_tensors(
    target: TargetSpec,
    base_cfg,
    base_shapes: dict[str, tuple[int, ...]],
    num_experts: int,
    dtype: torch.dtype,
    layout: str,
) -> list[PlannedTensor]:
    tied = bool(getattr(base_cfg, "tie_word_embeddings", False))
    hidden, inter = base_cfg.hidden_size, base_cfg.intermediate_size
    out: list[PlannedTensor] = []
    for name, shape in base_shapes.items():
        if is_dense_mlp(name) or (tied and name == "lm_head.weight"):
            continue
        out.append(PlannedTensor(name, shape, dtype))
    for layer in range(base_cfg.num_hidden_layers):
        mlp = {}
        for p in DENSE_MLP_PROJECTIONS:
            name = dense_mlp_name(layer, p)
            if name not in base_shapes:
                raise CheckpointMismatchError(f"base model has no dense MLP tensor {name!r}")
            mlp[p] = torch.empty(base_shapes[name], device="meta")
        out.append(
            PlannedTensor(
                router_checkpoint_name(target, layer, layout), (num_experts, hidden), dtype
            )
        )
        for name, t in layer_expert_tensors(target, layer, [mlp] * num_experts, layout).items():
            out.append(PlannedTensor(name, tuple(t.shape), dtype))
        if target.has_shared_expert:
            for name, t in shared_expert_checkpoint_tensors(
                layer, hidden, inter, torch.float32
            ).items():
                out.append(PlannedTensor(name, tuple(t.shape), dtype))
    return out


# --- gates -------------------------------------------------------------------------------------


def _load_prompt_tokenizer(config: MoEConfig, base_dir: Path):
    from mol.io import load_tokenizer

    return load_tokenizer(config.tokenizer or base_dir)


def compute_gates(plan: MoEPlan, *, device: str = "cpu") -> torch.Tensor:
    """The router weights of every layer, ``(L, E, H)`` float32, by ``plan.config.gate_mode``.

    ``hidden`` loads the base model (float32, on ``device``) and runs all prompts through it in
    batches of ``prompt_batch_size``; ``cheap_embed`` reads only the embedding matrix.
    Nearly parallel rows are logged as a warning (see :func:`gates.parallel_gate_layers`).
    """
    config = plan.config
    cfg = plan.out_config
    num_layers, hidden, num = cfg.num_hidden_layers, cfg.hidden_size, len(config.experts)
    if config.gate_mode == "random":
        gates = gate_math.random_gates(num_layers, num, hidden, config.seed)
    elif config.gate_mode == "uniform_random":
        gates = gate_math.uniform_random_gates(num_layers, num, hidden, config.seed)
    elif config.gate_mode == "cheap_embed":
        from mol.moe.assembly._prompts import tokenize_prompts

        tokenizer = _load_prompt_tokenizer(config, plan.base_dir)
        with LazyCheckpoint(plan.base_dir, allow_pickle=plan.allow_pickle) as base:
            embed = base.get_tensor("model.embed_tokens.weight")
        rows = [
            gate_math.cheap_embed_rows(
                embed,
                tokenize_prompts(tokenizer, e.positive_prompts),
                tokenize_prompts(tokenizer, e.negative_prompts),
                num_layers,
            )
            for e in config.experts
        ]
        gates = torch.stack(rows, dim=1)
    elif config.gate_mode == "hidden":
        gates = _hidden_gates(plan, device)
    else:  # MoEConfig validates gate_mode, so this is a bug, not bad input
        raise ConfigError(f"gate_mode: {config.gate_mode!r} has no gate initialiser")
    _warn_parallel(gates)
    return gates


def _hidden_gates(plan: MoEPlan, device: str) -> torch.Tensor:
    from mol.io import load_causal_lm
    from mol.moe.assembly._prompts import prompt_hidden_states

    config = plan.config
    tokenizer = _load_prompt_tokenizer(config, plan.base_dir)
    model = load_causal_lm(
        plan.base_dir, dtype=torch.float32, device=device, allow_pickle=plan.allow_pickle
    )
    # All experts' prompts in one list, so batches are full; split again afterwards.
    prompts: list[str] = []
    spans = []
    for e in config.experts:
        start = len(prompts)
        prompts.extend(e.positive_prompts)
        middle = len(prompts)
        prompts.extend(e.negative_prompts)
        spans.append((start, middle, len(prompts)))
    states = prompt_hidden_states(
        model,
        tokenizer,
        prompts,
        pooling=config.hidden_pooling,
        batch_size=config.prompt_batch_size,
    )
    del model
    rows = [
        gate_math.hidden_gate_rows(states[a:b], states[b:c] if c > b else None) for a, b, c in spans
    ]
    return torch.stack(rows, dim=1)  # (L, E, H)


def _warn_parallel(gates: torch.Tensor) -> tuple[tuple[int, int, int, float], ...]:
    pairs = gate_math.parallel_gate_layers(gates)
    if pairs:
        layers = sorted({p[0] for p in pairs})
        worst = max(pairs, key=lambda p: p[3])
        logger.warning(
            "gate rows are nearly parallel (cosine >= %.2f) in layer(s) %s, e.g. experts %d and "
            "%d in layer %d (cosine %.4f): the router can hardly tell those experts apart; "
            "use more distinct prompts or negative prompts",
            gate_math.PARALLEL_COSINE,
            ", ".join(map(str, layers)),
            worst[1],
            worst[2],
            worst[0],
            worst[3],
        )
    return tuple(pairs)


# --- writing -----------------------------------------------------------------------------------


def _shared_tensor(
    name: str, config: MoEConfig, base: LazyCheckpoint, experts: list[LazyCheckpoint]
) -> torch.Tensor:
    if config.shared_parts == "base":
        return base.get_tensor(name)
    total = experts[0].get_tensor(name).float()
    for ckpt in experts[1:]:
        total += ckpt.get_tensor(name).float()
    return total / len(experts)


def _write_tensors(
    plan: MoEPlan, gates: torch.Tensor, out: Path, max_shard_bytes: int
) -> tuple[int, int]:
    config, dtype = plan.config, plan.dtype
    writer = ShardedSafetensorsWriter(out, list(plan.tensors), max_shard_bytes=max_shard_bytes)
    base = LazyCheckpoint(plan.base_dir, allow_pickle=plan.allow_pickle)
    experts = [LazyCheckpoint(p, allow_pickle=plan.allow_pickle) for p in plan.expert_dirs]
    cfg = plan.out_config
    try:
        # The writer wants plan order; the plan was made shared-first, then layer by layer.
        layer_cache: dict[str, torch.Tensor] = {}
        for t in progress(plan.tensors, desc="writing MoE", unit="tensor"):
            if t.name not in layer_cache:
                layer_cache.update(_layer_tensors(t.name, plan, gates, base, experts, cfg))
            tensor = layer_cache.pop(t.name, None)
            if tensor is None:
                tensor = _shared_tensor(t.name, config, base, experts)
            writer.write(t.name, tensor.to(dtype))
        writer.close()
    finally:
        base.close()
        for ckpt in experts:
            ckpt.close()
    return len(plan.tensors), sum(t.nbytes for t in plan.tensors)


def _layer_tensors(
    name: str,
    plan: MoEPlan,
    gates: torch.Tensor,
    base: LazyCheckpoint,
    experts: list[LazyCheckpoint],
    cfg,
) -> dict[str, torch.Tensor]:
    """When ``name`` is a layer's router, that layer's router, experts and shared expert.

    One layer of every expert's MLP is in memory at a time (twice over for ``fused``, while
    the experts are stacked); the caller hands the tensors to the writer and drops them.
    """
    target, layout = plan.target, plan.config.layout
    for layer in range(cfg.num_hidden_layers):
        if name == router_checkpoint_name(target, layer, layout):
            break
    else:
        return {}
    tensors = {name: gates[layer]}
    mlps = [
        {p: ckpt.get_tensor(dense_mlp_name(layer, p)) for p in DENSE_MLP_PROJECTIONS}
        for ckpt in experts
    ]
    tensors.update(layer_expert_tensors(target, layer, mlps, layout))
    if target.has_shared_expert:
        tensors.update(
            shared_expert_checkpoint_tensors(
                layer, cfg.hidden_size, cfg.intermediate_size, plan.dtype
            )
        )
    return tensors


def _copy_extras(plan: MoEPlan, out: Path) -> None:
    generation = plan.base_dir / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, out / "generation_config.json")
    tokenizer_source = plan.config.tokenizer or plan.base_dir
    from mol.io import load_tokenizer

    try:
        tokenizer = load_tokenizer(tokenizer_source)
    except FileNotFoundError:
        if plan.config.tokenizer is not None:
            raise
        logger.info("the base model has no tokenizer; the MoE is written without one")
        return
    tokenizer.save_pretrained(out)


def build_moe(
    config: MoEConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    max_shard_bytes: int = 5 * 1000**3,
    allow_pickle: bool = False,
) -> AssemblyResult:
    """Assemble ``config``'s experts into an MoE checkpoint in ``out``.

    Args:
        config: what to assemble.
        out: output directory (created atomically; see :func:`mol.io.atomic_output_dir`).
        overwrite: replace a non-empty ``out``.
        device: where the base model runs the ``hidden`` gate prompts.
        max_shard_bytes: largest safetensors shard.
        allow_pickle: read trusted ``.bin`` inputs (outputs are always safetensors).

    Returns:
        What was written.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is False (checked first).
        ConfigError, UnsupportedArchitectureError, CheckpointMismatchError,
        ModelNotFoundError: see :func:`plan_moe`; raised before anything is written.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"output directory {out} exists and is not empty (pass overwrite=True / --overwrite)"
        )
    plan = plan_moe(config, allow_pickle=allow_pickle)
    gates = compute_gates(plan, device=device)
    pairs = gate_math.parallel_gate_layers(gates)  # already logged by compute_gates
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        plan.out_config.save_pretrained(tmp)
        num_tensors, num_bytes = _write_tensors(plan, gates, tmp, max_shard_bytes)
        _copy_extras(plan, tmp)
        (tmp / "mol_moe.json").write_text(
            json.dumps(
                {
                    "architecture": plan.target.name,
                    "base_model": config.base_model,
                    "experts": [e.source_model for e in config.experts],
                    "gate_mode": config.gate_mode,
                    "experts_per_token": config.experts_per_token,
                    "shared_parts": config.shared_parts,
                    "layout": config.layout,
                },
                indent=2,
            )
            + "\n"
        )
    seconds = time.perf_counter() - start
    logger.info(
        "wrote a %s MoE with %d experts (%d tensors, %.1f MB) to %s in %.1f s",
        plan.target.name,
        len(config.experts),
        num_tensors,
        num_bytes / 1e6,
        out,
        seconds,
    )
    return AssemblyResult(
        out.absolute(),
        plan.target.name,
        len(config.experts),
        num_tensors,
        num_bytes,
        seconds,
        tuple(pairs),
    )

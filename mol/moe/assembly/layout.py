"""Where dense MLP tensors go in each target MoE class: names, shapes, and the two layouts.

Both layouts are checked against the installed transformers (5.x) in the tests:

* ``fused`` (the default): exactly the target class's own parameters, as
  ``cls(config).state_dict()`` names them. Per layer ``model.layers.{i}.mlp.experts.gate_up_proj``
  ``(E, 2*I, H)`` (each expert's gate rows, then its up rows: the modelling code splits
  ``linear(x, gate_up_proj[e]).chunk(2, dim=-1)`` into ``gate, up``),
  ``model.layers.{i}.mlp.experts.down_proj`` ``(E, H, I)`` and the router
  ``model.layers.{i}.mlp.gate.weight`` ``(E, H)``; no transposition anywhere. The same for
  Mixtral, Qwen2-MoE and Qwen3-MoE. transformers 5 loads it as is; mergekit 0.1.5 writes it.
* ``per_expert``: one ``nn.Linear``-layout ``(out, in)`` tensor per expert and projection, as
  transformers 4 and serving engines read it (and transformers 5 converts on load):
  ``model.layers.{i}.block_sparse_moe.experts.{e}.w1|w3|w2.weight`` (gate, up, down) and
  ``model.layers.{i}.block_sparse_moe.gate.weight`` for Mixtral;
  ``model.layers.{i}.mlp.experts.{e}.gate_proj|up_proj|down_proj.weight`` and
  ``model.layers.{i}.mlp.gate.weight`` for Qwen2-MoE / Qwen3-MoE.

Qwen2-MoE also has a shared expert and a ``shared_expert_gate`` ``(1, H)`` (same names in both
layouts); we write the shared expert as zeros so it adds nothing and the model computes exactly
the routed mixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mol._errors import ConfigError
from mol.moe.assembly.config import LAYOUTS

__all__ = [
    "TargetSpec",
    "TARGETS",
    "DENSE_MLP_PROJECTIONS",
    "dense_mlp_name",
    "is_dense_mlp",
    "expert_checkpoint_tensors",
    "layer_expert_tensors",
    "router_checkpoint_name",
    "shared_expert_checkpoint_tensors",
    "fuse_experts",
]

DENSE_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TargetSpec:
    """What one target MoE family needs.

    Attributes:
        name: our architecture name (``mixtral``...).
        model_type: ``config.json``'s ``model_type`` of the output.
        class_name: the transformers class that loads it.
        dense_model_types: dense families whose MLPs fit (same attention and norms).
        checkpoint_names: dense projection -> expert tensor suffix in the ``per_expert`` layout.
        moe_prefix: the MoE block's name inside a layer in the ``per_expert`` layout (the
            ``fused`` layout always uses the module name ``mlp``).
        has_shared_expert: Qwen2-MoE's always-on shared expert and its sigmoid gate.
    """

    name: str
    model_type: str
    class_name: str
    dense_model_types: tuple[str, ...]
    checkpoint_names: dict[str, str]
    moe_prefix: str
    has_shared_expert: bool = False


TARGETS: dict[str, TargetSpec] = {
    "mixtral": TargetSpec(
        name="mixtral",
        model_type="mixtral",
        class_name="MixtralForCausalLM",
        dense_model_types=("llama", "mistral"),
        checkpoint_names={"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"},
        moe_prefix="block_sparse_moe",
    ),
    "qwen2_moe": TargetSpec(
        name="qwen2_moe",
        model_type="qwen2_moe",
        class_name="Qwen2MoeForCausalLM",
        dense_model_types=("qwen2",),
        checkpoint_names={p: p for p in DENSE_MLP_PROJECTIONS},
        moe_prefix="mlp",
        has_shared_expert=True,
    ),
    "qwen3_moe": TargetSpec(
        name="qwen3_moe",
        model_type="qwen3_moe",
        class_name="Qwen3MoeForCausalLM",
        dense_model_types=("qwen3",),
        checkpoint_names={p: p for p in DENSE_MLP_PROJECTIONS},
        moe_prefix="mlp",
    ),
}


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:  # MoEConfig validates it; this guards direct callers
        raise ConfigError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")


def dense_mlp_name(layer: int, projection: str) -> str:
    """``model.layers.{layer}.mlp.{projection}.weight`` (Llama, Mistral, Qwen2, Qwen3)."""
    return f"model.layers.{layer}.mlp.{projection}.weight"


def is_dense_mlp(name: str) -> bool:
    """True for a dense MLP tensor (these become experts; everything else is shared)."""
    return ".mlp." in name and name.startswith("model.layers.")


def expert_checkpoint_tensors(
    target: TargetSpec, layer: int, expert: int, mlp: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One dense MLP as expert ``expert`` of layer ``layer``, in the ``per_expert`` layout.

    Args:
        target: the target family.
        layer: decoder layer index.
        expert: expert index (row of the router).
        mlp: ``{"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}``.

    Returns:
        On-disk name -> tensor (the same tensors, renamed; ``nn.Linear`` layout kept).
    """
    prefix = f"model.layers.{layer}.{target.moe_prefix}.experts.{expert}"
    return {f"{prefix}.{target.checkpoint_names[p]}.weight": mlp[p] for p in DENSE_MLP_PROJECTIONS}


def layer_expert_tensors(
    target: TargetSpec, layer: int, mlps: Sequence[dict[str, torch.Tensor]], layout: str
) -> dict[str, torch.Tensor]:
    """All experts of one layer, named and shaped as ``layout`` writes them.

    Args:
        target: the target family.
        layer: decoder layer index.
        mlps: per expert, in router order, ``{"gate_proj": (I, H), "up_proj": (I, H),
            "down_proj": (H, I)}``.
        layout: ``fused`` (``gate_up_proj`` ``(E, 2*I, H)`` and ``down_proj`` ``(E, H, I)``) or
            ``per_expert`` (three ``nn.Linear`` tensors per expert).

    Returns:
        Checkpoint name -> tensor, in writing order.
    """
    _check_layout(layout)
    if layout == "fused":
        gate_up, down = fuse_experts(mlps)
        prefix = f"model.layers.{layer}.mlp.experts"
        return {f"{prefix}.gate_up_proj": gate_up, f"{prefix}.down_proj": down}
    out: dict[str, torch.Tensor] = {}
    for e, mlp in enumerate(mlps):
        out.update(expert_checkpoint_tensors(target, layer, e, mlp))
    return out


def router_checkpoint_name(target: TargetSpec, layer: int, layout: str) -> str:
    """The router (gate) weight ``(E, H)`` of one layer, as ``layout`` names it."""
    _check_layout(layout)
    prefix = "mlp" if layout == "fused" else target.moe_prefix
    return f"model.layers.{layer}.{prefix}.gate.weight"


def shared_expert_checkpoint_tensors(
    layer: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Qwen2-MoE's shared expert and its gate, all zeros: it contributes exactly nothing.

    (``sigmoid(0) = 0.5`` times a zero MLP is zero.) Returns checkpoint name -> tensor (the
    same in both layouts).
    """
    prefix = f"model.layers.{layer}.mlp.shared_expert"
    return {
        f"{prefix}.gate_proj.weight": torch.zeros(intermediate_size, hidden_size, dtype=dtype),
        f"{prefix}.up_proj.weight": torch.zeros(intermediate_size, hidden_size, dtype=dtype),
        f"{prefix}.down_proj.weight": torch.zeros(hidden_size, intermediate_size, dtype=dtype),
        f"{prefix}_gate.weight": torch.zeros(1, hidden_size, dtype=dtype),
    }


def fuse_experts(mlps: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformers-5 module layout of one layer's experts (the ``fused`` layout).

    Args:
        mlps: per expert ``{"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}``.

    Returns:
        ``gate_up_proj`` ``(E, 2*I, H)`` (gate rows then up rows) and ``down_proj``
        ``(E, H, I)``.
    """
    gate_up = torch.stack([torch.cat([m["gate_proj"], m["up_proj"]], dim=0) for m in mlps])
    down = torch.stack([m["down_proj"] for m in mlps])
    return gate_up, down

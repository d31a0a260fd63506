"""Where dense MLP tensors go in each target MoE class: names, shapes, and the fused layout.

Two layouts matter, both checked against the installed transformers (5.x):

* **On disk** (what we write, and what ``save_pretrained`` writes by default, what transformers
  4.x and serving engines read): one tensor per expert and projection,
  ``model.layers.{i}.block_sparse_moe.experts.{e}.w1|w3|w2.weight`` for Mixtral (gate, up,
  down) and ``model.layers.{i}.mlp.experts.{e}.gate_proj|up_proj|down_proj.weight`` for
  Qwen2-MoE / Qwen3-MoE, each in ``nn.Linear`` layout ``(out, in)``.
* **In the module** (what transformers 5 converts them to when it loads): per layer
  ``mlp.experts.gate_up_proj`` of shape ``(E, 2*I, H)`` (gate rows first, then up rows, as
  ``linear(x, gate_up_proj[e]).chunk(2, dim=-1)`` splits them) and ``mlp.experts.down_proj``
  of shape ``(E, H, I)``; no transposition. :func:`fuse_experts` builds it, so tests can check
  a loaded model against it.

The router is ``(E, H)`` in both layouts. Qwen2-MoE also has a shared expert and a
``shared_expert_gate`` ``(1, H)``; we write the shared expert as zeros so it adds nothing and
the model computes exactly the routed mixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "TargetSpec",
    "TARGETS",
    "DENSE_MLP_PROJECTIONS",
    "dense_mlp_name",
    "is_dense_mlp",
    "expert_checkpoint_tensors",
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
        checkpoint_names: dense projection -> on-disk expert tensor suffix.
        moe_prefix: the MoE block's name inside a layer on disk.
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


def dense_mlp_name(layer: int, projection: str) -> str:
    """``model.layers.{layer}.mlp.{projection}.weight`` (Llama, Mistral, Qwen2, Qwen3)."""
    return f"model.layers.{layer}.mlp.{projection}.weight"


def is_dense_mlp(name: str) -> bool:
    """True for a dense MLP tensor (these become experts; everything else is shared)."""
    return ".mlp." in name and name.startswith("model.layers.")


def expert_checkpoint_tensors(
    target: TargetSpec, layer: int, expert: int, mlp: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One dense MLP as expert ``expert`` of layer ``layer``, in the on-disk layout.

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


def router_checkpoint_name(target: TargetSpec, layer: int) -> str:
    """The router (gate) weight ``(E, H)`` of one layer, on disk."""
    return f"model.layers.{layer}.{target.moe_prefix}.gate.weight"


def shared_expert_checkpoint_tensors(
    layer: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Qwen2-MoE's shared expert and its gate, all zeros: it contributes exactly nothing.

    (``sigmoid(0) = 0.5`` times a zero MLP is zero.) Returns on-disk name -> tensor.
    """
    prefix = f"model.layers.{layer}.mlp.shared_expert"
    return {
        f"{prefix}.gate_proj.weight": torch.zeros(intermediate_size, hidden_size, dtype=dtype),
        f"{prefix}.up_proj.weight": torch.zeros(intermediate_size, hidden_size, dtype=dtype),
        f"{prefix}.down_proj.weight": torch.zeros(hidden_size, intermediate_size, dtype=dtype),
        f"{prefix}_gate.weight": torch.zeros(1, hidden_size, dtype=dtype),
    }


def fuse_experts(mlps: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformers-5 module layout of one layer's experts.

    Args:
        mlps: per expert ``{"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}``.

    Returns:
        ``gate_up_proj`` ``(E, 2*I, H)`` (gate rows then up rows) and ``down_proj``
        ``(E, H, I)``.
    """
    gate_up = torch.stack([torch.cat([m["gate_proj"], m["up_proj"]], dim=0) for m in mlps])
    down = torch.stack([m["down_proj"] for m in mlps])
    return gate_up, down

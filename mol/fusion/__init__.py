"""MoL fusion building blocks: adapters between widths, routers, and their auxiliary losses.

:class:`MoLRuntime` stacks :class:`FusedLayer` objects between the primary model's embeddings
and head (forward pass; generation and checkpoints are still to come).
"""

from mol.fusion.adapters import BottleneckAdapter, LinearAdapter, norm_preserving_init_
from mol.fusion.aux_losses import load_balancing_loss, router_entropy, router_z_loss
from mol.fusion.blocks import BlockExtractor, ExpertBlock
from mol.fusion.hf import MoLCache, MoLForCausalLM, MoLHFConfig
from mol.fusion.layer import FusedLayer
from mol.fusion.routers import RouterOutput, SimpleRouter, TokenLevelRouter
from mol.fusion.runtime import MoLConfig, MoLRuntime

__all__ = [
    "BlockExtractor",
    "MoLCache",
    "MoLForCausalLM",
    "MoLHFConfig",
    "ExpertBlock",
    "FusedLayer",
    "MoLConfig",
    "MoLRuntime",
    "BottleneckAdapter",
    "LinearAdapter",
    "RouterOutput",
    "SimpleRouter",
    "TokenLevelRouter",
    "load_balancing_loss",
    "norm_preserving_init_",
    "router_entropy",
    "router_z_loss",
]

"""MoL fusion building blocks: adapters between widths, routers, and their auxiliary losses.

(The fused layer and runtime model build on these.)
"""

from mol.fusion.adapters import BottleneckAdapter, LinearAdapter, norm_preserving_init_
from mol.fusion.aux_losses import load_balancing_loss, router_entropy, router_z_loss
from mol.fusion.routers import RouterOutput, SimpleRouter, TokenLevelRouter

__all__ = [
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

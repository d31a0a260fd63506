"""The training objective: pure functions of logits, token ids and router outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mol.fusion.routers import RouterOutput

__all__ = ["next_token_loss", "router_losses", "training_loss"]


def next_token_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross entropy of predicting token ``t+1`` from positions ``<= t``.

    Padding is masked out: a prediction counts only when both its position and its target
    are real tokens.
    """
    targets = input_ids[:, 1:]
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    if attention_mask is None:
        return F.cross_entropy(flat, targets.reshape(-1))
    keep = (attention_mask[:, 1:] & attention_mask[:, :-1]).bool().reshape(-1)
    return F.cross_entropy(flat[keep], targets.reshape(-1)[keep])


def router_losses(routings: list[RouterOutput]) -> dict[str, torch.Tensor]:
    """Load balancing, entropy and z-loss, each the mean over fused layers (with gradients)."""
    return {
        "load_balancing": torch.stack([r.load_balancing_loss() for r in routings]).mean(),
        "entropy": torch.stack([r.entropy() for r in routings]).mean(),
        "z_loss": torch.stack([r.z_loss() for r in routings]).mean(),
    }


def training_loss(
    lm_loss: torch.Tensor,
    aux: dict[str, torch.Tensor],
    *,
    load_balancing_coeff: float = 0.0,
    entropy_penalty_coeff: float = 0.0,
    router_z_loss_coeff: float = 0.0,
) -> torch.Tensor:
    """``lm + lb * load_balancing + ent * entropy + z * z_loss``."""
    return (
        lm_loss
        + load_balancing_coeff * aux["load_balancing"]
        + entropy_penalty_coeff * aux["entropy"]
        + router_z_loss_coeff * aux["z_loss"]
    )

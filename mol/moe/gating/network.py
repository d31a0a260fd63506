"""The gating network: pooled prompt features -> one probability per expert."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from mol._errors import ConfigError
from mol.io import load_model_safe, save_model_safe

__all__ = ["GatingNetwork", "save_gating_network", "load_gating_network"]


class GatingNetwork(nn.Module):
    """An MLP classifier over standardised features: ``(B, D) -> (B, E)`` logits.

    Features are standardised with the training split's per-dimension mean and standard
    deviation (buffers, saved with the weights), then go through ``Linear -> ReLU -> Dropout``
    for each hidden width and a final ``Linear`` to ``num_experts`` logits.

    Args:
        input_dim: feature width ``D``.
        num_experts: output classes ``E`` (>= 2).
        hidden_dims: widths of the hidden layers (empty for a linear classifier).
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self,
        input_dim: int,
        num_experts: int,
        hidden_dims: tuple[int, ...] | list[int] = (512, 256),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ConfigError(f"input_dim must be >= 1, got {input_dim}")
        if num_experts < 2:
            raise ConfigError(f"num_experts must be >= 2, got {num_experts}")
        if any(int(h) < 1 for h in hidden_dims):
            raise ConfigError(f"hidden_dims must be positive, got {list(hidden_dims)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.input_dim = int(input_dim)
        self.num_experts = int(num_experts)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.dropout = float(dropout)
        layers: list[nn.Module] = []
        width = self.input_dim
        for hidden in self.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(self.dropout)]
            width = hidden
        layers.append(nn.Linear(width, self.num_experts))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(self.input_dim))
        self.register_buffer("feature_std", torch.ones(self.input_dim))

    def arch(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able (stored with the weights)."""
        return {
            "input_dim": self.input_dim,
            "num_experts": self.num_experts,
            "hidden_dims": list(self.hidden_dims),
            "dropout": self.dropout,
        }

    @torch.no_grad()
    def set_standardisation(self, features: torch.Tensor) -> None:
        """Set the feature mean / std from training features ``(N, D)``."""
        self.feature_mean.copy_(features.mean(dim=0))
        std = features.std(dim=0) if len(features) > 1 else torch.ones_like(self.feature_std)
        self.feature_std.copy_(std.clamp(min=1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, E)`` from features ``(B, D)``."""
        if features.shape[-1] != self.input_dim:
            raise ValueError(f"expected features of width {self.input_dim}, got {features.shape}")
        x = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        return self.mlp(x)

    def probs(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(B, E)``; each row sums to 1."""
        return torch.softmax(self.forward(features), dim=-1)


def save_gating_network(
    net: GatingNetwork, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> None:
    """Write the network's weights to ``path`` (``.safetensors``) with its architecture and
    ``metadata`` (e.g. the feature settings) in the header."""
    save_model_safe(net, path, {"gating_network": net.arch(), **(metadata or {})})


def load_gating_network(path: str | os.PathLike) -> tuple[GatingNetwork, dict[str, Any]]:
    """Rebuild a network saved by :func:`save_gating_network`; returns ``(net, metadata)``.

    Raises:
        ModelNotFoundError: no such file.
        CheckpointMismatchError: the file was not written by :func:`save_gating_network`.
    """
    from safetensors import safe_open

    from mol._errors import CheckpointMismatchError, ModelNotFoundError
    from mol.io._safe import METADATA_KEY, _decode_metadata

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"no gating network at {path}")
    with safe_open(path, framework="pt") as handle:
        raw = handle.metadata() or {}
    metadata = _decode_metadata(path, raw) if METADATA_KEY in raw else {}
    arch = metadata.get("gating_network")
    if not isinstance(arch, dict):
        raise CheckpointMismatchError(
            f"{path} has no 'gating_network' architecture in its header: not a gating network"
        )
    net = GatingNetwork(**arch)
    load_model_safe(net, path)
    return net.eval(), metadata

"""Gating-network MoE: a trained prompt classifier mixing fine-tuned experts' feed-forward blocks.

- :func:`train_gating_network` / :class:`GateTrainConfig`: features from a base model, a small
  classifier, best epoch by validation F1, the test split held out.
- :class:`MoEModel`: a transformers causal LM whose every feed-forward block is a mixture of
  the experts', weighted by the gate's probabilities for the prompt; ``save_pretrained`` /
  ``from_pretrained`` round-trip through safetensors.
- :class:`MoEInference`: prompt in, ``{"text", "gating_probs"}`` out.
"""

from mol.moe.gating.inference import MoEInference
from mol.moe.gating.model import MoEConfig, MoEModel
from mol.moe.gating.network import GatingNetwork, load_gating_network, save_gating_network
from mol.moe.gating.train import GateTrainConfig, train_gating_network

__all__ = [
    "GateTrainConfig",
    "GatingNetwork",
    "MoEConfig",
    "MoEInference",
    "MoEModel",
    "load_gating_network",
    "save_gating_network",
    "train_gating_network",
]

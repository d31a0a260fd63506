"""Lazy sources: a model skeleton on the meta device, filled one module at a time.

With ``MoLConfig(memory_efficient=True)`` the runtime never loads a whole source model: it
builds the architecture on the meta device (no memory) and reads from the checkpoint only the
tensors of the blocks, embeddings and head it takes.
"""

from __future__ import annotations

import torch
from torch import nn

from mol._errors import CheckpointMismatchError
from mol.arch import ArchitectureInfo
from mol.io import LazyCheckpoint, resolve_model_dir

__all__ = ["meta_skeleton", "materialise_from_checkpoint"]


def meta_skeleton(config) -> nn.Module:
    """The causal-LM architecture of ``config`` with every tensor on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.eval().requires_grad_(False)


def materialise_from_checkpoint(
    module: nn.Module,
    prefix: str,
    name: str,
    info: ArchitectureInfo,
    *,
    trust_remote_code: bool = False,
) -> None:
    """Give ``module`` CPU storage and fill every tensor from ``name``'s checkpoint.

    Tensor ``n`` of the module is read as ``prefix + n``; a tied LM head missing from the
    checkpoint is read from the token embedding.

    Raises:
        CheckpointMismatchError: a tensor is missing from the checkpoint or has another shape.
    """
    module.to_empty(device="cpu")
    with LazyCheckpoint(resolve_model_dir(name)) as ckpt, torch.no_grad():
        for key, tensor in module.state_dict(keep_vars=True).items():
            full = prefix + key
            if (
                full not in ckpt
                and info.tied_embeddings
                and info.lm_head_path
                and full.startswith(info.lm_head_path + ".")
            ):
                full = info.embedding_path + full[len(info.lm_head_path) :]
            if full not in ckpt:
                raise CheckpointMismatchError(f"{name}: checkpoint has no tensor {full!r}")
            value = ckpt.get_tensor(full)
            if tuple(value.shape) != tuple(tensor.shape):
                raise CheckpointMismatchError(
                    f"{name}: {full} is {tuple(value.shape)}, the model "
                    f"expects {tuple(tensor.shape)}"
                )
            tensor.copy_(value)

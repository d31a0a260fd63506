"""Resumable training checkpoints, without pickle.

``<dir>/runtime/`` is the model (a MoL checkpoint with the recipe and trainable weights, see
:mod:`mol.fusion.checkpoint`, or a ``save_pretrained`` directory); ``optimizer.safetensors`` holds every optimizer state tensor
(``state.<param>.<name>``) and ``rng.safetensors`` the torch RNG states; ``trainer_state.json``
holds the rest: step, epoch, position in the epoch, loss and eval history, the scheduler's
state, the optimizer's parameter groups and its non-tensor state, and the training config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mol._errors import CheckpointMismatchError
from mol.io import atomic_output_dir

__all__ = ["save_training_state", "load_training_state", "optimizer_to_flat", "optimizer_from_flat"]


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into named tensors and a JSON-serialisable rest."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in rest["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_training_state(
    path: str | Path, *, save_model, optimizer, scheduler, progress: dict, config: dict
) -> Path:
    """Write a resumable checkpoint to ``path`` (atomically, replacing an older one)."""
    tensors, rest = optimizer_to_flat(optimizer.state_dict())
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    with atomic_output_dir(path, overwrite=True) as tmp:
        save_model(tmp / "runtime")
        save_file(tensors, tmp / "optimizer.safetensors", metadata={"format": "pt"})
        save_file(rng, tmp / "rng.safetensors", metadata={"format": "pt"})
        doc = {
            "progress": progress,
            "scheduler": scheduler.state_dict(),
            "optimizer": rest,
            "config": config,
        }
        (tmp / "trainer_state.json").write_text(json.dumps(doc, indent=2) + "\n")
    return Path(path).absolute()


def load_training_state(path: str | Path) -> dict:
    """Read what :func:`save_training_state` wrote: ``progress``, ``scheduler``, ``optimizer``
    (a state dict), ``rng`` (tensors) and ``config``."""
    path = Path(path)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise CheckpointMismatchError(
            f"{path} is not a training checkpoint (no trainer_state.json)"
        )
    doc = json.loads(state_file.read_text())
    doc["optimizer"] = optimizer_from_flat(
        load_file(path / "optimizer.safetensors"), doc["optimizer"]
    )
    doc["rng"] = load_file(path / "rng.safetensors")
    return doc

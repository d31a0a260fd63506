"""Save and rebuild a MoL runtime: its recipe, its trainable weights, and source fingerprints.

A checkpoint directory holds:

* ``mol_config.json``: the :class:`MoLConfig`, the layer specs (``[[model, layer], ...]`` per
  fused layer) and a SHA-256 fingerprint of every source part the runtime uses (each expert
  block, the primary's embeddings, final norm and head), computed from the tensors themselves;
* ``trainable.safetensors``: adapters and routers (everything the runtime trains);
* ``config.json``: the transformers config (``model_type: mol_fusion``), so
  ``AutoModelForCausalLM.from_pretrained(path)`` rebuilds it too;
* with ``include_experts=True``, ``experts.safetensors`` with every other weight too and
  ``sources/<i>/config.json`` per source model, so the checkpoint rebuilds without the sources.

Loading rebuilds the runtime from the recipe, checks the fingerprints (a source whose weights
changed is refused unless ``allow_changed_sources=True``) and loads the weights strictly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mol._errors import CheckpointMismatchError, ConfigError
from mol.io import atomic_output_dir

__all__ = ["save_checkpoint", "load_checkpoint", "load_trainable_weights", "fingerprint"]

logger = logging.getLogger("mol")
_FORMAT = 1


def fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's named tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fingerprints(runtime) -> dict[str, str]:
    """Fingerprints of the source parts the checkpoint does not store (frozen ones)."""
    parts = {
        "embeddings": runtime.embed_tokens,
        "norm": runtime.norm,
        "lm_head": runtime.lm_head,
        "position_embeddings": runtime.embed_positions,
    }
    for i, layer in enumerate(runtime.layers):
        for expert in layer.experts:
            parts[f"layer{i}/{expert.source}"] = expert.block
    return {
        name: fingerprint(module)
        for name, module in parts.items()
        if module is not None and not any(p.requires_grad for p in module.parameters())
    }


def _layer_specs(runtime) -> list[list[list]]:
    """``[[model, layer], ...]`` per fused layer."""
    return [
        [[e.source.rsplit(":", 1)[0], int(e.source.rsplit(":", 1)[1])] for e in layer.experts]
        for layer in runtime.layers
    ]


def _trainable_names(runtime) -> list[str]:
    return [n for n, p in runtime.named_parameters() if p.requires_grad]


def save_checkpoint(
    runtime,
    path: str | Path,
    *,
    use_safetensors: bool = True,
    include_experts: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``runtime`` to ``path`` (atomically). See the module docstring for the layout."""
    if not use_safetensors:
        raise ConfigError("MoL checkpoints are written as safetensors only (use_safetensors=True)")
    state = runtime.state_dict(keep_vars=True)
    trainable = set(_trainable_names(runtime))
    recipe = {
        "format": _FORMAT,
        "config": runtime.config_dict(),
        "layers": _layer_specs(runtime),
        "fingerprints": _fingerprints(runtime),
        "trainable": sorted(trainable),
        "include_experts": include_experts,
    }
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        save_file(
            {k: v.detach().contiguous() for k, v in state.items() if k in trainable},
            tmp / "trainable.safetensors",
            metadata={"format": "pt"},
        )
        if include_experts:
            rest = {
                k: v.detach().contiguous() for k, v in _dedup(state).items() if k not in trainable
            }
            save_file(rest, tmp / "experts.safetensors", metadata={"format": "pt"})
            for i, name in enumerate(runtime.config.models):
                runtime.source_config(name).save_pretrained(tmp / "sources" / str(i))
            if runtime._tokenizer is not None or _has_tokenizer(runtime):
                runtime.tokenizer.save_pretrained(tmp / "sources" / "0")
        (tmp / "mol_config.json").write_text(json.dumps(recipe, indent=2) + "\n")
        # config.json makes the directory loadable by AutoModelForCausalLM.from_pretrained
        runtime.as_hf_model().config.to_json_file(tmp / "config.json")
    return Path(path).absolute()


def _has_tokenizer(runtime) -> bool:
    try:
        runtime.tokenizer  # noqa: B018 (loads it)
    except OSError:
        return False
    return True


def _dedup(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop names that share storage with an earlier one (tied weights save once)."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def load_checkpoint(path: str | Path, *, allow_changed_sources: bool = False):
    """Rebuild the runtime saved at ``path`` (see the module docstring).

    Raises:
        CheckpointMismatchError: a source model's weights changed since saving (unless
            ``allow_changed_sources``), or the saved weights do not fit the rebuilt runtime.
    """
    from mol.fusion.runtime import MoLConfig, MoLRuntime

    path = Path(path)
    recipe = json.loads((path / "mol_config.json").read_text())
    if recipe.get("format") != _FORMAT:
        raise ConfigError(f"{path}: unknown MoL checkpoint format {recipe.get('format')!r}")
    config = MoLConfig(**recipe["config"])
    sources = None
    if recipe["include_experts"]:
        sources = {name: path / "sources" / str(i) for i, name in enumerate(config.models)}
    runtime = MoLRuntime(config, _offline_sources=sources)
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i, experts in enumerate(recipe["layers"]):
        runtime.add_layer([(m, int(k)) for m, k in experts], layer_idx=i)
    if recipe["include_experts"]:
        _load_into(runtime, load_file(path / "experts.safetensors"), path / "experts.safetensors")
    else:
        _check_fingerprints(runtime, recipe["fingerprints"], allow_changed_sources)
    _load_into(runtime, load_file(path / "trainable.safetensors"), path / "trainable.safetensors")
    if "trainable" in recipe:  # what was trained stays trainable (and is saved again)
        trainable = set(recipe["trainable"])
        for name, param in runtime.named_parameters():
            param.requires_grad_(name in trainable)
    return runtime.eval()


def load_trainable_weights(runtime, path: str | Path) -> None:
    """Load a checkpoint's trainable weights into an already built, identical runtime.

    Raises:
        CheckpointMismatchError: the checkpoint was saved from a runtime with other layers or
            another configuration.
    """
    path = Path(path)
    recipe = json.loads((path / "mol_config.json").read_text())
    if recipe["layers"] != _layer_specs(runtime) or recipe["config"] != runtime.config_dict():
        raise CheckpointMismatchError(
            f"{path} was saved from another runtime (layers or configuration differ)"
        )
    _load_into(runtime, load_file(path / "trainable.safetensors"), path / "trainable.safetensors")


def _check_fingerprints(runtime, saved: dict[str, str], allow: bool) -> None:
    now = _fingerprints(runtime)
    changed = sorted(k for k in saved if now.get(k) != saved[k])
    if changed:
        message = (
            f"source weights changed since the checkpoint was saved: {', '.join(changed)}"
            " (pass allow_changed_sources=True to load anyway)"
        )
        if not allow:
            raise CheckpointMismatchError(message)
        logger.warning(message)


def _load_into(runtime, tensors: dict[str, torch.Tensor], file: Path) -> None:
    state = runtime.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise CheckpointMismatchError(f"{file}: tensors the runtime does not have: {unknown[:5]}")
    for name, tensor in tensors.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{file}: {name} is {tuple(tensor.shape)}, the runtime "
                f"has {tuple(state[name].shape)}"
            )
    with torch.no_grad():
        for name, param in runtime.state_dict(keep_vars=True).items():
            if name in tensors:
                param.copy_(tensors[name])

"""Structural searches over an instantiated (meta-device) model tree, used by generic discovery.

Each function looks for one part by structure, not by family-specific names:

* layer stacks: non-empty ``nn.ModuleList``s whose children all share one class, not nested in another
  such list (so MoE expert lists inside blocks never count).
* token embedding: ``model.get_input_embeddings()``; else the ``nn.Embedding`` with ``vocab_size`` rows;
  for vision models the ``*patch_embed*`` module.
* position embedding: an ``nn.Embedding`` (not the token embedding, outside the stacks) with
  ``max_position_embeddings <= num_embeddings <= max_position_embeddings + 2`` (OPT and BART add an
  offset of 2), the one closest to the layer stack; for vision models a ``*position*`` ``nn.Parameter``.
* final norm: a norm module (class name containing ``"Norm"``) that is a sibling of the stack, or of one
  of its ancestors up to the base model (never the head class's own children, so DistilBERT's MLM-head
  ``vocab_layer_norm`` is not taken). A sibling registered after the stack wins; one registered before
  it is accepted too (OPT registers ``final_layer_norm`` before ``layers``). Norms whose name contains
  ``"emb"`` normalise the embeddings, not the last block (BLOOM, BART), and are skipped.
* feed-forward width: the input width of a down projection ``Linear(I -> D)`` in a block.
"""

from __future__ import annotations

from torch import nn

from mol._errors import UnsupportedArchitectureError
from mol.arch._info import NormType

__all__ = [
    "layer_stacks",
    "pick_stack",
    "subtree",
    "token_embedding",
    "position_embedding",
    "final_norm",
    "first_norm",
    "norm_type",
    "intermediate_from_layer",
]

_POSITION_OFFSET_MAX = 2  # OPT/BART learned positions reserve 2 extra rows

Stack = tuple[str, nn.ModuleList]


def layer_stacks(model: nn.Module) -> list[Stack]:
    """Homogeneous, non-empty ``nn.ModuleList``s not nested in another one, in registration order."""
    stacks: list[Stack] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(outer + ".") for outer, _ in stacks):
            continue
        if len({type(child) for child in module}) == 1:
            stacks.append((name, module))
    return stacks


def pick_stack(
    model: nn.Module, stacks: list[Stack], within: str | None = None, near: str | None = None
) -> str:
    """Path of the stack under ``within`` sharing most path components with ``near``, then the longest,
    then the one with most parameters.

    Raises:
        UnsupportedArchitectureError: no stack (under ``within``).
    """
    candidates = [
        (name, stack) for name, stack in stacks if not within or name.startswith(within + ".")
    ]
    if not candidates:
        where = f" under '{within}'" if within else ""
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: no nn.ModuleList of identical blocks found{where}"
        )

    def rank(item: Stack) -> tuple[int, int, int]:
        name, stack = item
        shared = _shared_components(name, near) if near is not None else 0
        return shared, len(stack), sum(p.numel() for p in stack.parameters())

    return max(candidates, key=rank)[0]


def _shared_components(a: str, b: str) -> int:
    count = 0
    for left, right in zip(a.split("."), b.split("."), strict=False):
        if left != right:
            break
        count += 1
    return count


def subtree(model: nn.Module, names: dict[int, str], getter: str, keyword: str) -> str | None:
    """Path of ``model.get_decoder()`` / ``get_encoder()``, else of the first module named ``keyword``."""
    method = getattr(model, getter, None)
    sub = method() if callable(method) else None
    if isinstance(sub, nn.Module) and sub is not model and id(sub) in names:
        return names[id(sub)]
    return next((name for name in names.values() if name.rsplit(".", 1)[-1] == keyword), None)


def token_embedding(model: nn.Module, names: dict[int, str], vocab_size: int | None) -> nn.Module:
    """``model.get_input_embeddings()``, else the vocabulary-sized ``nn.Embedding`` / patch embedding.

    Raises:
        UnsupportedArchitectureError: none found.
    """
    try:
        embedding = model.get_input_embeddings()
    except NotImplementedError:  # CLIPModel and some vision classes do not implement it
        embedding = None
    if isinstance(embedding, nn.Module) and id(embedding) in names:
        return embedding
    for name, module in model.named_modules():
        if vocab_size is not None:
            if isinstance(module, nn.Embedding) and module.num_embeddings == vocab_size:
                return module
        elif "patch_embed" in name.rsplit(".", 1)[-1]:
            return module
    raise UnsupportedArchitectureError(f"{type(model).__name__}: no input embedding module found")


def position_embedding(
    model: nn.Module,
    token: nn.Module,
    max_positions: int | None,
    layer_path: str,
    stack_paths: list[str],
    hidden: int,
) -> str | None:
    """Path of the learned absolute position embedding (module or, for ViT-likes, parameter), or None."""

    def outside_stacks(name: str) -> bool:
        return not any(name.startswith(stack + ".") for stack in stack_paths)

    token_weight = getattr(token, "weight", None)
    candidates: list[str] = []
    if max_positions is not None:
        for name, module in model.named_modules():
            if (
                isinstance(module, nn.Embedding)
                and module is not token
                and module.weight is not token_weight
                and max_positions <= module.num_embeddings <= max_positions + _POSITION_OFFSET_MAX
                and outside_stacks(name)
            ):
                candidates.append(name)
    if not candidates:
        # Vision transformers keep learned positions as a bare (1, num_patches + 1, D) parameter.
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{param_name}" if module_name else param_name
                if (
                    "position" in param_name
                    and param.dim() >= 2
                    and param.shape[-1] == hidden
                    and outside_stacks(full)
                ):
                    candidates.append(full)
    if not candidates:
        return None
    return max(candidates, key=lambda name: _shared_components(name, layer_path))


def _is_norm(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm))
        or "Norm" in type(module).__name__
    )


def final_norm(model: nn.Module, names: dict[int, str], layer_path: str) -> str | None:
    """Path of the norm applied after the last block of ``layer_path``, or ``None``."""
    base = model.base_model
    base_path = names.get(id(base), "") if isinstance(base, nn.Module) else ""
    parts = layer_path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent_path = ".".join(parts[:depth])
        children = list(model.get_submodule(parent_path).named_children())
        branch = [name for name, _ in children].index(parts[depth])
        norms = [
            (i, name)
            for i, (name, child) in enumerate(children)
            if _is_norm(child) and "emb" not in name.lower()
        ]
        after = [name for i, name in norms if i > branch]
        before = [name for i, name in norms if i < branch]
        found = after[0] if after else (before[-1] if before else None)
        if found is not None:
            return f"{parent_path}.{found}" if parent_path else found
        if parent_path == base_path:
            break  # the head class's own children (MLM transforms, classifiers) are not the final norm
    return None


def first_norm(layer: nn.Module) -> nn.Module | None:
    """The first norm module inside a block (used for the norm type of models without a final norm)."""
    return next((m for m in layer.modules() if _is_norm(m)), None)


def norm_type(norm: nn.Module) -> NormType:
    """``"rmsnorm"`` for RMS norms (by class, by name, or a weight without a bias), else ``"layernorm"``."""
    name = type(norm).__name__.lower()
    if isinstance(norm, nn.RMSNorm) or "rmsnorm" in name:
        return "rmsnorm"
    if isinstance(norm, nn.LayerNorm):
        return "layernorm"
    # A scale without a shift is the RMS form (T5LayerNorm); no parameters at all is OLMo's LayerNorm.
    has_weight = getattr(norm, "weight", None) is not None
    has_bias = getattr(norm, "bias", None) is not None
    return "rmsnorm" if has_weight and not has_bias else "layernorm"


def _linear_in_out(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    # transformers' Conv1D (GPT-2) stores its weight as (in, out) and keeps out as `nf`.
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.weight.shape[0]), int(module.nf)
    return None


def intermediate_from_layer(layer: nn.Module, hidden: int, attention_width: int) -> int | None:
    """Feed-forward width from the down projection: a linear ``(I -> D)`` with ``I`` not ``D`` and not
    the attention output width; ``None`` when the block has none (fused expert tensors)."""
    widths = []
    for module in layer.modules():
        io = _linear_in_out(module)
        if io is not None and io[1] == hidden and io[0] not in (hidden, attention_width):
            widths.append(io[0])
    return max(widths) if widths else None

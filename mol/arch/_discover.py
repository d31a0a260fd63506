"""Generic discovery: describe any model type without a table entry.

The head class is built on the meta device (no memory, no weights) and its module tree is searched
by structure (see :mod:`mol.arch._search`); sizes come from the config, with fallbacks from the
module shapes. The test suite checks that this agrees with every known-family table entry.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn
from transformers import PretrainedConfig

from mol._errors import UnsupportedArchitectureError
from mol.arch import _search
from mol.arch._auto import (
    HeadChoice,
    choose_head,
    is_image_type,
    is_masked_lm_type,
    is_multimodal,
    supports_causal_lm,
)
from mol.arch._config import (
    GENERIC_SEQ2SEQ_SIZES,
    GENERIC_SIZES,
    looks_rotary,
    read_sizes,
    require,
    rope_info,
)
from mol.arch._info import ArchitectureFamily, ArchitectureInfo

__all__ = ["discover_architecture", "build_meta_model"]


def build_meta_model(
    config: PretrainedConfig, trust_remote_code: bool = False
) -> tuple[nn.Module, HeadChoice]:
    """Instantiate the head class for ``config`` on the meta device (no memory, no weights).

    Raises:
        UnsupportedArchitectureError: no ``Auto*`` mapping (nor a trusted ``auto_map``) knows the type.
    """
    choice = choose_head(config, trust_remote_code)
    if choice is None:
        raise UnsupportedArchitectureError(
            f"model_type {config.model_type!r} is in none of transformers' AutoModel mappings"
            + ("" if trust_remote_code else " (pass trust_remote_code=True for custom code)")
        )
    # from_config may write attributes (attention implementation, ...) onto the config it is given.
    config = copy.deepcopy(config)
    if getattr(config, "architectures", None) is None:
        # transformers' auto factory iterates config.architectures when a model type maps to several
        # classes (DeiT) and fails on None, which configs built in Python have.
        config.architectures = []
    with torch.device("meta"):
        model = choice.factory.from_config(config, trust_remote_code=trust_remote_code)
    return model, choice


def discover_architecture(
    config: PretrainedConfig, *, trust_remote_code: bool = False, name_or_path: str | None = None
) -> ArchitectureInfo:
    """Describe any model type by building its head class on the meta device and searching the tree.

    Head class: ``AutoModelForSeq2SeqLM`` (or ``SpeechSeq2Seq``) for encoder-decoder configs, else the
    first of ``AutoModelForCausalLM``, ``AutoModelForMaskedLM``, ``AutoModelForImageClassification``
    (``AutoModelForImageTextToText`` for multimodal configs) and ``AutoModel`` whose mapping has the
    model type.

    Args:
        config: the model's config.
        trust_remote_code: allow a custom ``auto_map`` class to be instantiated.
        name_or_path: recorded in the result; defaults to ``config.name_or_path``.

    Returns:
        An :class:`ArchitectureInfo` whose paths are relative to the instantiated head class.

    Raises:
        UnsupportedArchitectureError: no head class, no layer stack or no embedding could be found, or
            a size is not one integer.
        ConfigError: the config lacks a size that the module tree cannot supply (e.g. head count).
    """
    model, choice = build_meta_model(config, trust_remote_code)
    names = {id(module): name for name, module in model.named_modules()}
    family = _family(config, choice)
    text_config = config.get_text_config(decoder=True) if family == "multimodal" else config
    attrs = GENERIC_SEQ2SEQ_SIZES if family == "encoder-decoder" else GENERIC_SIZES
    sizes = read_sizes(text_config, attrs, vision=family == "vision")

    embedding = _search.token_embedding(model, names, sizes.vocab_size)
    embedding_path = names[id(embedding)]
    stacks = _search.layer_stacks(model)
    layer_path, encoder_layer_path = _locate_stacks(model, names, stacks, family, embedding_path)
    layers = model.get_submodule(layer_path)

    embedding_dim = embedding.embedding_dim if isinstance(embedding, nn.Embedding) else None
    hidden = require(
        sizes.hidden_dim or embedding_dim, "hidden size", text_config, ("hidden_size",)
    )
    num_heads = require(sizes.num_heads, "number of heads", text_config, attrs.heads)
    head_dim = sizes.head_dim or hidden // num_heads
    intermediate = (
        sizes.intermediate_dim
        or _search.intermediate_from_layer(layers[0], hidden, num_heads * head_dim)
        or 4 * hidden
    )
    position_path = _search.position_embedding(
        model,
        embedding,
        sizes.max_position_embeddings,
        layer_path,
        [path for path, _ in stacks],
        hidden,
    )
    final_norm_path = _search.final_norm(model, names, layer_path)
    norm = (
        model.get_submodule(final_norm_path) if final_norm_path else _search.first_norm(layers[0])
    )
    head = model.get_output_embeddings()
    has_head = isinstance(head, nn.Module)
    tied = (
        has_head
        and getattr(head, "weight", None) is not None
        and head.weight is getattr(embedding, "weight", None)
    )
    rotary = position_path is None and looks_rotary(text_config)
    return ArchitectureInfo(
        name_or_path=name_or_path
        if name_or_path is not None
        else os.fspath(config.name_or_path or ""),
        architecture_type=config.model_type,
        architecture_class=type(model).__name__,
        architecture_family=family,
        num_layers=len(layers),
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        num_heads=num_heads,
        num_kv_heads=sizes.num_kv_heads or num_heads,
        head_dim=head_dim,
        vocab_size=sizes.vocab_size,
        max_position_embeddings=sizes.max_position_embeddings,
        layer_path=layer_path,
        encoder_layer_path=encoder_layer_path,
        embedding_path=embedding_path,
        position_embedding_path=position_path,
        final_norm_path=final_norm_path,
        lm_head_path=names.get(id(head)) if has_head else None,
        tied_embeddings=tied,
        supports_causal_lm=supports_causal_lm(config, trust_remote_code),
        rope=rope_info(text_config, head_dim) if rotary else None,
        norm_type=_search.norm_type(norm) if norm is not None else "layernorm",
    )


def _family(config: PretrainedConfig, choice: HeadChoice) -> ArchitectureFamily:
    if is_multimodal(config):
        return "multimodal"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if choice.kind == "image":
        return "vision"
    if choice.kind == "masked" or is_masked_lm_type(config):
        return "encoder-only"  # BERT-likes also have a CausalLM head, but are encoders
    if choice.kind == "causal":
        return "decoder-only"
    if is_image_type(config):
        return "vision"
    return "decoder-only" if getattr(config, "is_decoder", False) else "encoder-only"


def _locate_stacks(
    model: nn.Module,
    names: dict[int, str],
    stacks: list[_search.Stack],
    family: ArchitectureFamily,
    embedding_path: str,
) -> tuple[str, str | None]:
    """Return ``(layer_path, encoder_layer_path)``."""
    if family == "encoder-decoder":
        decoder_root = _search.subtree(model, names, "get_decoder", "decoder")
        decoder = _search.pick_stack(model, stacks, within=decoder_root)
        encoder_root = _search.subtree(model, names, "get_encoder", "encoder")
        encoder = _search.pick_stack(model, stacks, within=encoder_root) if encoder_root else None
        return decoder, (encoder if encoder != decoder else None)
    if family == "multimodal":
        # The language tower: the stack nearest the token embedding, not a (maybe longer) vision one.
        return _search.pick_stack(model, stacks, near=embedding_path), None
    return _search.pick_stack(model, stacks), None

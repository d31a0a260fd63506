"""``ArchitectureInfo`` for a model type in the known-family table, from the config alone."""

from __future__ import annotations

from transformers import PretrainedConfig

from mol.arch._auto import supports_causal_lm
from mol.arch._config import first_attr, flags_hold, read_sizes, require, rope_info
from mol.arch._families import FamilySpec
from mol.arch._info import ArchitectureInfo

__all__ = ["info_from_family"]


def info_from_family(
    config: PretrainedConfig,
    spec: FamilySpec,
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
) -> ArchitectureInfo:
    """Combine a table entry with the sizes in ``config``; builds no model.

    Raises:
        ConfigError: a size the family needs is missing from the config (names the attributes tried).
    """
    attrs = spec.sizes
    vision = spec.family == "vision"
    sizes = read_sizes(config, attrs, vision=vision)
    hidden = require(sizes.hidden_dim, "hidden size", config, ("hidden_size",))
    head_dim = require(sizes.head_dim, "head_dim", config, ("head_dim",))
    rotary = spec.rotary and flags_hold(config, spec.rotary_requires)
    has_final_norm = spec.final_norm_path is not None and flags_hold(
        config, spec.final_norm_requires
    )
    has_lm_head = spec.lm_head_path is not None
    tied = bool(has_lm_head and first_attr(config, ("tie_word_embeddings",)))
    if not vision:
        require(sizes.vocab_size, "vocab size", config, ("vocab_size",))
    return ArchitectureInfo(
        name_or_path=name_or_path,
        architecture_type=config.model_type,
        architecture_class=spec.head_class,
        architecture_family=spec.family,
        num_layers=require(sizes.num_layers, "number of layers", config, attrs.layers),
        hidden_dim=hidden,
        intermediate_dim=require(
            sizes.intermediate_dim, "intermediate size", config, attrs.intermediate
        ),
        num_heads=require(sizes.num_heads, "number of heads", config, attrs.heads),
        num_kv_heads=require(sizes.num_kv_heads, "number of kv heads", config, attrs.kv_heads),
        head_dim=head_dim,
        vocab_size=sizes.vocab_size,
        max_position_embeddings=sizes.max_position_embeddings,
        layer_path=spec.layer_path,
        encoder_layer_path=spec.encoder_layer_path,
        embedding_path=spec.embedding_path,
        position_embedding_path=spec.position_embedding_path,
        final_norm_path=spec.final_norm_path if has_final_norm else None,
        lm_head_path=spec.lm_head_path,
        tied_embeddings=tied,
        supports_causal_lm=supports_causal_lm(config, trust_remote_code),
        rope=rope_info(config, head_dim) if rotary else None,
        norm_type=spec.norm_type,
    )

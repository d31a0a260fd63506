"""What detection returns: :class:`ArchitectureInfo` and :class:`RopeInfo` (plain frozen data)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["ArchitectureFamily", "NormType", "RopeInfo", "ArchitectureInfo"]

ArchitectureFamily = Literal[
    "decoder-only", "encoder-only", "encoder-decoder", "vision", "multimodal"
]
NormType = Literal["layernorm", "rmsnorm"]

_FAMILIES: tuple[str, ...] = get_args(ArchitectureFamily)
_NORM_TYPES: tuple[str, ...] = get_args(NormType)


@dataclass(frozen=True)
class RopeInfo:
    """Rotary position embedding settings of a model, read from its config.

    Attributes:
        theta: base frequency (``rope_parameters["rope_theta"]``; 10000.0 where the family hard-codes it).
        rope_type: ``"default"``, ``"linear"``, ``"dynamic"``, ``"yarn"``, ``"llama3"``, ...
        head_dim: size of one attention head.
        rotary_dim: how many of the ``head_dim`` channels are rotated
            (``head_dim * partial_rotary_factor``, or GPT-J's ``rotary_dim``).
        scaling: the remaining keys of ``config.rope_parameters`` (factor, original_max_position_embeddings,
            ...), or ``None`` when there are none.
    """

    theta: float
    rope_type: str
    head_dim: int
    rotary_dim: int
    scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(
                f"rotary_dim must be in (0, head_dim={self.head_dim}], got {self.rotary_dim}"
            )


@dataclass(frozen=True)
class ArchitectureInfo:
    """Where the parts of a Hugging Face model live and how big they are, from ``config.json`` alone.

    All ``*_path`` attributes are dotted attribute paths relative to an instance of
    ``architecture_class`` (resolve them with :func:`mol.arch.resolve_module`); sizes describe the stack at
    ``layer_path`` (the decoder of an encoder-decoder model).

    Attributes:
        name_or_path: what detection was asked about (hub id, local directory, or the config's own name).
        architecture_type: ``config.model_type``, e.g. ``"llama"``.
        architecture_class: transformers head class the paths are relative to, e.g. ``"LlamaForCausalLM"``.
        architecture_family: one of ``"decoder-only"``, ``"encoder-only"``, ``"encoder-decoder"``,
            ``"vision"``, ``"multimodal"``.
        num_layers: number of blocks in ``layer_path``.
        hidden_dim: residual stream width ``D``.
        intermediate_dim: feed-forward inner width (per branch for gated MLPs).
        num_heads: query heads per attention block.
        num_kv_heads: key/value heads (``num_heads`` for MHA, fewer for GQA/MQA).
        head_dim: size of one attention head (``config.head_dim`` if set, else ``D // num_heads``).
        vocab_size: token vocabulary, ``None`` for vision models.
        max_position_embeddings: context length from the config, ``None`` when the config has none
            (T5, BLOOM, ViT).
        layer_path: the ``nn.ModuleList`` of blocks, e.g. ``"model.layers"``; the decoder stack for
            encoder-decoder models.
        encoder_layer_path: the encoder stack of an encoder-decoder model, else ``None``.
        embedding_path: token embedding ``(vocab_size, D)``; for vision models the patch embedding module.
        position_embedding_path: learned absolute position embeddings, ``None`` for rotary, relative or
            ALiBi models. For ViT this names an ``nn.Parameter`` of shape ``(1, num_patches + 1, D)``
            rather than a module: read it with ``model.get_parameter(path)``.
        final_norm_path: norm applied after the last block of ``layer_path``, ``None`` when there is
            none (post-LN BERT, BART).
        lm_head_path: projection to the vocabulary, ``None`` when the head class has none (ViT's
            ``classifier`` projects to labels, not to a vocabulary, so it is not reported here).
        tied_embeddings: the output projection shares its weight with the token embedding.
        supports_causal_lm: ``AutoModelForCausalLM`` has a class for this model type.
        rope: rotary settings, ``None`` for models without rotary embeddings.
        norm_type: ``"layernorm"`` or ``"rmsnorm"`` (T5's ``T5LayerNorm`` is an RMS norm).
    """

    name_or_path: str
    architecture_type: str
    architecture_class: str
    architecture_family: ArchitectureFamily
    num_layers: int
    hidden_dim: int
    intermediate_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int | None
    max_position_embeddings: int | None
    layer_path: str
    encoder_layer_path: str | None
    embedding_path: str
    position_embedding_path: str | None
    final_norm_path: str | None
    lm_head_path: str | None
    tied_embeddings: bool
    supports_causal_lm: bool
    rope: RopeInfo | None
    norm_type: NormType

    def __post_init__(self) -> None:
        if self.architecture_family not in _FAMILIES:
            raise ValueError(
                f"architecture_family must be one of {_FAMILIES}, got {self.architecture_family!r}"
            )
        if self.norm_type not in _NORM_TYPES:
            raise ValueError(f"norm_type must be one of {_NORM_TYPES}, got {self.norm_type!r}")
        for field in (
            "num_layers",
            "hidden_dim",
            "intermediate_dim",
            "num_heads",
            "num_kv_heads",
            "head_dim",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (``rope`` becomes a nested dict or ``None``)."""
        return dataclasses.asdict(self)

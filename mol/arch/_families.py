"""The table of known families: ``model_type -> FamilySpec`` (data only, no code per family).

Paths are relative to ``FamilySpec.head_class``: the ``AutoModelForCausalLM`` class where the model
type has one (BERT -> ``BertLMHeadModel``), else ``AutoModelForMaskedLM`` (DistilBERT),
``AutoModelForSeq2SeqLM`` for encoder-decoder models (BART uses ``BartForConditionalGeneration`` even
though ``BartForCausalLM`` exists, because the encoder is part of the model), and
``AutoModelForImageClassification`` for vision models (ViT).

A model type missing here is handled by generic discovery (``mol.arch._discover``); the test suite
checks that discovery agrees with every entry below, so adding a family needs no code, and an entry
is only needed to skip building a meta-device model or to pin paths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from mol.arch._config import SizeAttrs
from mol.arch._info import ArchitectureFamily, NormType

__all__ = ["FamilySpec", "KNOWN_FAMILIES", "family_spec"]


@dataclass(frozen=True)
class FamilySpec:
    """Where one family keeps its parts, and which config attributes hold its sizes.

    Attributes:
        head_class: transformers class name the paths are relative to.
        family: architecture family string.
        layer_path: block stack (decoder stack for encoder-decoder models).
        embedding_path: token embedding (patch embedding for vision).
        final_norm_path: norm after the last block, ``None`` if the family has none.
        lm_head_path: projection to the vocabulary, ``None`` if the head class has none.
        position_embedding_path: learned absolute position embedding, ``None`` otherwise.
        encoder_layer_path: encoder stack of encoder-decoder models.
        norm_type: ``"layernorm"`` or ``"rmsnorm"``.
        rotary: the family uses rotary position embeddings.
        sizes: config attribute names for the sizes.
        final_norm_requires: config flags (``"attr"`` truthy / ``"!attr"`` falsy) that must hold for the
            final norm to exist (OPT-350m is post-LN and has none).
        rotary_requires: flags that must hold for rotary to be used (Falcon with ``alibi=True`` has none).
    """

    head_class: str
    family: ArchitectureFamily
    layer_path: str
    embedding_path: str
    final_norm_path: str | None
    lm_head_path: str | None
    position_embedding_path: str | None = None
    encoder_layer_path: str | None = None
    norm_type: NormType = "layernorm"
    rotary: bool = False
    sizes: SizeAttrs = SizeAttrs()
    final_norm_requires: tuple[str, ...] = ()
    rotary_requires: tuple[str, ...] = ()


_GPT2_SIZES = SizeAttrs(intermediate=("n_inner",), intermediate_factor=4)

# Llama-style decoders (Mistral, Qwen2/3, Phi-3, Gemma 1/2) share one layout.
_LLAMA_LIKE = FamilySpec(
    head_class="LlamaForCausalLM",
    family="decoder-only",
    layer_path="model.layers",
    embedding_path="model.embed_tokens",
    final_norm_path="model.norm",
    lm_head_path="lm_head",
    norm_type="rmsnorm",
    rotary=True,
)

_KNOWN: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(
        head_class="GPT2LMHeadModel",
        family="decoder-only",
        layer_path="transformer.h",
        embedding_path="transformer.wte",
        position_embedding_path="transformer.wpe",
        final_norm_path="transformer.ln_f",
        lm_head_path="lm_head",
        sizes=_GPT2_SIZES,
    ),
    "gpt_neo": FamilySpec(
        head_class="GPTNeoForCausalLM",
        family="decoder-only",
        layer_path="transformer.h",
        embedding_path="transformer.wte",
        position_embedding_path="transformer.wpe",
        final_norm_path="transformer.ln_f",
        lm_head_path="lm_head",
        sizes=SizeAttrs(intermediate_factor=4),
    ),
    "gptj": FamilySpec(
        head_class="GPTJForCausalLM",
        family="decoder-only",
        layer_path="transformer.h",
        embedding_path="transformer.wte",
        final_norm_path="transformer.ln_f",
        lm_head_path="lm_head",
        rotary=True,
        sizes=_GPT2_SIZES,
    ),
    "opt": FamilySpec(
        head_class="OPTForCausalLM",
        family="decoder-only",
        layer_path="model.decoder.layers",
        embedding_path="model.decoder.embed_tokens",
        position_embedding_path="model.decoder.embed_positions",
        final_norm_path="model.decoder.final_layer_norm",
        lm_head_path="lm_head",
        sizes=SizeAttrs(intermediate=("ffn_dim",)),
        final_norm_requires=("do_layer_norm_before", "!_remove_final_layer_norm"),
    ),
    "bloom": FamilySpec(
        head_class="BloomForCausalLM",
        family="decoder-only",
        layer_path="transformer.h",
        embedding_path="transformer.word_embeddings",
        final_norm_path="transformer.ln_f",
        lm_head_path="lm_head",
        sizes=SizeAttrs(intermediate=(), intermediate_factor=4),
    ),
    "falcon": FamilySpec(
        head_class="FalconForCausalLM",
        family="decoder-only",
        layer_path="transformer.h",
        embedding_path="transformer.word_embeddings",
        final_norm_path="transformer.ln_f",
        lm_head_path="lm_head",
        rotary=True,
        sizes=SizeAttrs(intermediate=("ffn_hidden_size",), intermediate_factor=4),
        rotary_requires=("!alibi",),
    ),
    "llama": _LLAMA_LIKE,
    "mistral": replace(_LLAMA_LIKE, head_class="MistralForCausalLM"),
    "qwen2": replace(_LLAMA_LIKE, head_class="Qwen2ForCausalLM"),
    "qwen3": replace(_LLAMA_LIKE, head_class="Qwen3ForCausalLM"),
    "phi3": replace(_LLAMA_LIKE, head_class="Phi3ForCausalLM"),
    "gemma": replace(_LLAMA_LIKE, head_class="GemmaForCausalLM"),
    "gemma2": replace(_LLAMA_LIKE, head_class="Gemma2ForCausalLM"),
    "bert": FamilySpec(
        head_class="BertLMHeadModel",
        family="encoder-only",
        layer_path="bert.encoder.layer",
        embedding_path="bert.embeddings.word_embeddings",
        position_embedding_path="bert.embeddings.position_embeddings",
        final_norm_path=None,  # post-LN: every block ends in its own LayerNorm
        lm_head_path="cls.predictions.decoder",
    ),
    "roberta": FamilySpec(
        head_class="RobertaForCausalLM",
        family="encoder-only",
        layer_path="roberta.encoder.layer",
        embedding_path="roberta.embeddings.word_embeddings",
        position_embedding_path="roberta.embeddings.position_embeddings",
        final_norm_path=None,
        lm_head_path="lm_head.decoder",
    ),
    "distilbert": FamilySpec(
        head_class="DistilBertForMaskedLM",
        family="encoder-only",
        layer_path="distilbert.transformer.layer",
        embedding_path="distilbert.embeddings.word_embeddings",
        position_embedding_path="distilbert.embeddings.position_embeddings",
        final_norm_path=None,  # vocab_layer_norm belongs to the MLM head, after vocab_transform
        lm_head_path="vocab_projector",
        sizes=SizeAttrs(intermediate=("hidden_dim",)),
    ),
    "t5": FamilySpec(
        head_class="T5ForConditionalGeneration",
        family="encoder-decoder",
        layer_path="decoder.block",
        encoder_layer_path="encoder.block",
        embedding_path="shared",
        final_norm_path="decoder.final_layer_norm",
        lm_head_path="lm_head",
        norm_type="rmsnorm",  # T5LayerNorm has no mean subtraction and no bias
        sizes=SizeAttrs(layers=("num_decoder_layers", "num_layers"), intermediate=("d_ff",)),
    ),
    "bart": FamilySpec(
        head_class="BartForConditionalGeneration",
        family="encoder-decoder",
        layer_path="model.decoder.layers",
        encoder_layer_path="model.encoder.layers",
        embedding_path="model.shared",
        position_embedding_path="model.decoder.embed_positions",
        final_norm_path=None,  # post-LN; layernorm_embedding runs before the first block
        lm_head_path="lm_head",
        sizes=SizeAttrs(
            layers=("decoder_layers",),
            heads=("decoder_attention_heads",),
            intermediate=("decoder_ffn_dim",),
        ),
    ),
    "vit": FamilySpec(
        head_class="ViTForImageClassification",
        family="vision",
        layer_path="vit.layers",
        embedding_path="vit.embeddings.patch_embeddings",
        position_embedding_path="vit.embeddings.position_embeddings",  # an nn.Parameter
        final_norm_path="vit.layernorm",
        lm_head_path=None,  # `classifier` maps to labels, not to a vocabulary
    ),
}

KNOWN_FAMILIES: MappingProxyType[str, FamilySpec] = MappingProxyType(_KNOWN)


def family_spec(model_type: str) -> FamilySpec | None:
    """Return the table entry for ``model_type``, or ``None`` (the caller falls back to discovery)."""
    return KNOWN_FAMILIES.get(model_type)

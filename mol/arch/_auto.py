"""Which transformers head class a model type maps to (membership in the ``Auto*`` mappings)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSpeechSeq2Seq,
    PretrainedConfig,
)
from transformers.models.auto import modeling_auto

__all__ = [
    "HeadChoice",
    "choose_head",
    "supports_causal_lm",
    "is_masked_lm_type",
    "is_image_type",
    "is_multimodal",
]


@dataclass(frozen=True)
class HeadChoice:
    """An ``Auto*`` factory and the mapping it was chosen from.

    Attributes:
        auto_name: e.g. ``"AutoModelForCausalLM"`` (also the key used in a remote-code ``auto_map``).
        factory: the ``Auto*`` class; call ``factory.from_config(config)``.
        kind: ``"causal"``, ``"masked"``, ``"seq2seq"``, ``"speech-seq2seq"``, ``"image"``,
            ``"image-text"`` or ``"base"``.
    """

    auto_name: str
    factory: type
    kind: str


_CAUSAL = HeadChoice("AutoModelForCausalLM", AutoModelForCausalLM, "causal")
_MASKED = HeadChoice("AutoModelForMaskedLM", AutoModelForMaskedLM, "masked")
_SEQ2SEQ = HeadChoice("AutoModelForSeq2SeqLM", AutoModelForSeq2SeqLM, "seq2seq")
_SPEECH_SEQ2SEQ = HeadChoice(
    "AutoModelForSpeechSeq2Seq", AutoModelForSpeechSeq2Seq, "speech-seq2seq"
)
_IMAGE = HeadChoice("AutoModelForImageClassification", AutoModelForImageClassification, "image")
_IMAGE_TEXT = HeadChoice("AutoModelForImageTextToText", AutoModelForImageTextToText, "image-text")
_BASE = HeadChoice("AutoModel", AutoModel, "base")

_MAPPING_NAMES: dict[str, dict[str, str]] = {
    "causal": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "masked": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "seq2seq": modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    "speech-seq2seq": modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    "image": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    "image-text": modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    "base": modeling_auto.MODEL_MAPPING_NAMES,
}


def _has(config: PretrainedConfig, choice: HeadChoice, trust_remote_code: bool) -> bool:
    if config.model_type in _MAPPING_NAMES[choice.kind]:
        return True
    auto_map = getattr(config, "auto_map", None) or {}
    return trust_remote_code and choice.auto_name in auto_map


def supports_causal_lm(config: PretrainedConfig, trust_remote_code: bool = False) -> bool:
    """True when ``AutoModelForCausalLM`` has a class for this config's model type."""
    return _has(config, _CAUSAL, trust_remote_code)


def choose_head(config: PretrainedConfig, trust_remote_code: bool = False) -> HeadChoice | None:
    """Pick the head class discovery instantiates, or ``None`` when no ``Auto*`` mapping knows it.

    Order: ``Seq2SeqLM`` / ``SpeechSeq2Seq`` for encoder-decoder configs, then ``CausalLM``, ``MaskedLM``,
    ``ImageClassification``, and the bare ``AutoModel``. Multimodal configs (with both a
    ``text_config`` and a ``vision_config``) try ``CausalLM``, ``ImageTextToText`` and ``AutoModel``
    only: an image classifier built from CLIP's config would drop the text tower.
    """
    if is_multimodal(config):
        order = [_CAUSAL, _IMAGE_TEXT, _BASE]
    else:
        order = [_CAUSAL, _MASKED, _IMAGE, _BASE]
    if getattr(config, "is_encoder_decoder", False):
        order[:0] = [_SEQ2SEQ, _SPEECH_SEQ2SEQ]
    for choice in order:
        if _has(config, choice, trust_remote_code):
            return choice
    return None


def is_multimodal(config: PretrainedConfig) -> bool:
    """True for configs holding both a text and a vision sub-config (LLaVA, Gemma 3, CLIP)."""
    return (
        getattr(config, "vision_config", None) is not None
        and getattr(config, "text_config", None) is not None
    )


def is_masked_lm_type(config: PretrainedConfig) -> bool:
    """True when ``AutoModelForMaskedLM`` knows this model type (BERT-like encoders)."""
    return config.model_type in _MAPPING_NAMES["masked"]


def is_image_type(config: PretrainedConfig) -> bool:
    """True when ``AutoModelForImageClassification`` knows this model type."""
    return config.model_type in _MAPPING_NAMES["image"]

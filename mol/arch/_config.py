"""Sizes and rotary settings read from a ``PretrainedConfig`` (no model is built here).

Config attribute names differ between families (``n_layer`` / ``num_layers`` / ``num_hidden_layers``,
``n_inner`` / ``ffn_dim`` / ``d_ff`` ...). Most are aliased through ``config.attribute_map``; the rest
are listed per family in :class:`SizeAttrs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from mol._errors import ConfigError, UnsupportedArchitectureError
from mol.arch._info import RopeInfo

__all__ = [
    "SizeAttrs",
    "ConfigSizes",
    "GENERIC_SIZES",
    "GENERIC_SEQ2SEQ_SIZES",
    "first_attr",
    "int_attr",
    "flags_hold",
    "read_sizes",
    "require",
    "rope_info",
    "looks_rotary",
]

# Keys of ``rope_parameters`` that RopeInfo holds in its own fields; everything else is "scaling".
_ROPE_OWN_KEYS = frozenset({"rope_theta", "rope_type", "partial_rotary_factor"})
_DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class SizeAttrs:
    """Config attribute names to read sizes from, each tried in order (first non-``None`` wins).

    Attributes:
        layers: number of blocks in the reported layer stack.
        heads: attention heads.
        kv_heads: key/value heads; ``num_heads`` when none is set.
        intermediate: feed-forward width.
        intermediate_factor: ``intermediate = factor * hidden`` when every ``intermediate`` name is
            missing or ``None`` (GPT-2's ``n_inner=None``, BLOOM and Falcon's fixed 4x).
    """

    layers: tuple[str, ...] = ("num_hidden_layers",)
    heads: tuple[str, ...] = ("num_attention_heads",)
    kv_heads: tuple[str, ...] = ("num_key_value_heads", "num_kv_heads")
    intermediate: tuple[str, ...] = ("intermediate_size",)
    intermediate_factor: int | None = None


# Used by generic discovery, where the family is unknown: broad candidate lists.
GENERIC_SIZES = SizeAttrs(
    layers=("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    heads=("num_attention_heads", "n_head", "num_heads", "n_heads"),
    intermediate=("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size"),
)
# Encoder-decoder models report their decoder stack, so decoder-specific names come first.
GENERIC_SEQ2SEQ_SIZES = SizeAttrs(
    layers=("decoder_layers", "num_decoder_layers", "num_hidden_layers", "num_layers"),
    heads=("decoder_attention_heads", "num_decoder_heads", "num_attention_heads", "num_heads"),
    intermediate=("decoder_ffn_dim", "d_ff", "intermediate_size", "ffn_dim"),
)


@dataclass(frozen=True)
class ConfigSizes:
    """Sizes read from a config; ``None`` where the config does not say (discovery fills those in)."""

    num_layers: int | None
    hidden_dim: int | None
    intermediate_dim: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    max_position_embeddings: int | None


def first_attr(config: PretrainedConfig, names: tuple[str, ...]) -> Any | None:
    """Return the first attribute in ``names`` that exists on ``config`` and is not ``None``."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def flags_hold(config: PretrainedConfig, flags: tuple[str, ...]) -> bool:
    """True when every flag holds: ``"attr"`` needs a truthy attribute, ``"!attr"`` a falsy/missing one."""
    for flag in flags:
        negate = flag.startswith("!")
        value = bool(getattr(config, flag.lstrip("!"), False))
        if value == negate:
            return False
    return True


def _kv_heads(config: PretrainedConfig, attrs: SizeAttrs, num_heads: int | None) -> int | None:
    # Falcon-7B / GPT-BigCode style multi-query attention: one shared K/V head. Falcon's
    # new_decoder_architecture (40B/180B) ignores multi_query and uses num_kv_heads.
    if getattr(config, "multi_query", False) and not getattr(
        config, "new_decoder_architecture", False
    ):
        return 1
    kv = int_attr(config, attrs.kv_heads)
    return kv if kv is not None else num_heads


def read_sizes(config: PretrainedConfig, attrs: SizeAttrs, *, vision: bool = False) -> ConfigSizes:
    """Read layer/width/head sizes from ``config`` using the attribute names in ``attrs``.

    Args:
        config: a text (or vision) config; multimodal callers pass ``config.get_text_config()``.
        attrs: attribute names for this family.
        vision: ``True`` for image models, which have no vocabulary.

    Returns:
        A :class:`ConfigSizes`; fields the config does not define are ``None``.

    Raises:
        UnsupportedArchitectureError: a size is not one integer (Swin's per-stage head counts).
    """
    hidden = int_attr(config, ("hidden_size",))
    num_heads = int_attr(config, attrs.heads)
    intermediate = int_attr(config, attrs.intermediate)
    if intermediate is None and attrs.intermediate_factor is not None and hidden is not None:
        intermediate = attrs.intermediate_factor * hidden
    head_dim = int_attr(config, ("head_dim",))
    if head_dim is None and hidden is not None and num_heads:
        head_dim = hidden // num_heads
    return ConfigSizes(
        num_layers=int_attr(config, attrs.layers),
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        num_heads=num_heads,
        num_kv_heads=_kv_heads(config, attrs, num_heads),
        head_dim=head_dim,
        vocab_size=None if vision else int_attr(config, ("vocab_size",)),
        max_position_embeddings=int_attr(config, ("max_position_embeddings",)),
    )


def int_attr(config: PretrainedConfig, names: tuple[str, ...]) -> int | None:
    """Like :func:`first_attr`, for sizes: the value must be one integer.

    Raises:
        UnsupportedArchitectureError: the attribute holds something else (a per-stage list, a string).
    """
    for name in names:
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UnsupportedArchitectureError(
                f"config.{name} of model_type {config.model_type!r} is {value!r}, not one integer "
                "(models with per-stage sizes, such as Swin, are not supported)"
            )
        return value
    return None


def require(value: int | None, what: str, config: PretrainedConfig, names: tuple[str, ...]) -> int:
    """Return ``value``, or raise :class:`ConfigError` naming the attributes that were tried."""
    if value is None:
        raise ConfigError(
            f"cannot read {what} from the config of model_type {config.model_type!r}: "
            f"none of {list(names)} is set"
        )
    return value


def _rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, Mapping) or not params:
        return {}
    # Models with per-layer-type rope (Gemma 3: {"full_attention": {...}, "sliding_attention": {...}})
    # store one dict per attention type; the global (full) attention one describes the model.
    if all(isinstance(v, Mapping) for v in params.values()):
        chosen = params.get("full_attention", next(iter(params.values())))
        return dict(chosen)
    return dict(params)


def rope_info(config: PretrainedConfig, head_dim: int) -> RopeInfo:
    """Build :class:`RopeInfo` from ``config.rope_parameters`` (transformers >= 5) or legacy attributes.

    ``rotary_dim`` is GPT-J's ``config.rotary_dim`` when set, else
    ``int(head_dim * partial_rotary_factor)`` (Phi-3, GPT-NeoX, StableLM), else ``head_dim``.
    """
    params = _rope_parameters(config)
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    rope_type = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    rotary_dim = getattr(config, "rotary_dim", None)
    if rotary_dim is None:
        rotary_dim = int(head_dim * partial) if partial is not None else head_dim
    scaling = {k: v for k, v in params.items() if k not in _ROPE_OWN_KEYS and k != "type"}
    return RopeInfo(
        theta=float(theta if theta is not None else _DEFAULT_ROPE_THETA),
        rope_type=str(rope_type),
        head_dim=head_dim,
        rotary_dim=int(rotary_dim),
        scaling=scaling or None,
    )


def looks_rotary(config: PretrainedConfig) -> bool:
    """Guess from the config alone whether a model uses rotary embeddings (for unknown families).

    Rotary when the config carries ``rope_parameters`` / ``rope_theta`` / ``rotary_dim`` and does not
    switch to ALiBi. Callers also require that no learned position embedding was found.
    """
    if getattr(config, "alibi", False):
        return False
    has_rope = bool(_rope_parameters(config))
    return has_rope or any(
        getattr(config, name, None) is not None for name in ("rope_theta", "rotary_dim")
    )

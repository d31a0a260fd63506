"""The merge configuration: mergekit's YAML schema as typed, validated, frozen dataclasses.

Any mergekit 0.1.5 configuration file loads unchanged (``merge_method``, ``base_model``,
``models``/``slices``/``modules``, ``parameters`` with scalars, gradients and filter lists,
``dtype``, ``out_dtype``, ``tokenizer_source``/``tokenizer``, ``chat_template``), and
:func:`load_merge_config` checks it completely before any tensor is read. Where mergekit
silently ignores something we raise :class:`~mol.ConfigError` naming the path of the key:

* unknown keys at any level (``models[1].paramters (did you mean 'parameters'?)``);
* parameter names the merge method does not have, at any level;
* a global parameter (one value per tensor, e.g. slerp's ``t``) set per model or per slice
  source: mergekit never reads it there;
* repeated keys in YAML text (PyYAML keeps the last one).

Deliberate restrictions: ``dtype``/``out_dtype`` are ``float32``, ``float16`` or ``bfloat16``
(an optional ``torch.`` prefix is dropped, as mergekit does; mergekit also takes float64 and
int64), the ``override_architecture`` form of a model reference is rejected, and a
``layer_range`` must be non-empty. How values resolve per tensor is described (and done) in
:mod:`mol.merge._params`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar, get_args

import yaml

from mol._config import check_keys as _check_keys
from mol._config import read_yaml
from mol._config import within as _within
from mol._errors import ConfigError, closest_match_hint
from mol.merge._params import coerce_scalar
from mol.merge.methods._registry import MethodSpec, get_method

__all__ = [
    "DType",
    "Scalar",
    "ParameterValue",
    "ModelReference",
    "parse_model_reference",
    "Conditional",
    "InputModelDefinition",
    "InputSliceDefinition",
    "OutputSliceDefinition",
    "OutputModuleDefinition",
    "ModelTokenEmbedding",
    "ZeroEmbedding",
    "TokenEmbeddingConfig",
    "TokenizerConfig",
    "MergeConfiguration",
    "load_merge_config",
]

DType = Literal["float32", "float16", "bfloat16"]
_DTYPES: tuple[str, ...] = get_args(DType)

Scalar: TypeAlias = bool | int | float | str
"""One YAML scalar, kept as written (converted to the parameter's type when resolved)."""

_SCALARS = (bool, int, float, str)
_T = TypeVar("_T")


# --- helpers -----------------------------------------------------------------------------------


def _as_list(raw: Any, path: str) -> list[Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {raw!r}")
    return list(raw)


def _optional_str(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- model references --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReference:
    """A parsed model reference: ``path[@revision][+lora_path[@lora_revision]]``.

    ``path`` is a hub id (``user/repo``) or a local directory; the optional LoRA adapter is
    merged into the model before merging (mergekit's ``model+lora`` syntax).
    """

    path: str
    revision: str | None = None
    lora_path: str | None = None
    lora_revision: str | None = None

    def __str__(self) -> str:
        text = self.path + (f"@{self.revision}" if self.revision else "")
        if self.lora_path:
            text += "+" + self.lora_path + (f"@{self.lora_revision}" if self.lora_revision else "")
        return text


def _split_revision(text: str, what: str) -> tuple[str, str | None]:
    if text.count("@") > 1:
        raise ConfigError(f"{what} {text!r} has more than one '@'")
    path, _, revision = text.partition("@")
    if not path or ("@" in text and not revision):
        raise ConfigError(f"{what} {text!r} needs a path before '@' and a revision after it")
    return path, revision or None


def parse_model_reference(text: str) -> ModelReference:
    """Parse mergekit's model reference syntax ``path[@revision][+lora[@revision]]``.

    Raises:
        ConfigError: not a string, empty, more than one ``+``, or more than one ``@`` per part.
    """
    if not isinstance(text, str) or not text:
        raise ConfigError(f"expected a model name or path (string), got {text!r}")
    chunks = text.split("+")
    if len(chunks) > 2:
        raise ConfigError(f"model reference {text!r} has more than one '+' (model+lora)")
    path, revision = _split_revision(chunks[0], "model")
    if len(chunks) == 1:
        return ModelReference(path, revision)
    lora_path, lora_revision = _split_revision(chunks[1], "LoRA")
    return ModelReference(path, revision, lora_path, lora_revision)


def _check_model(value: Any, name: str) -> None:
    try:
        parse_model_reference(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _model_ref_from_yaml(raw: Any, path: str) -> Any:
    """mergekit also takes ``{model: {path, revision}, lora: {path, revision}}``: make a string."""
    if not isinstance(raw, Mapping):
        return raw
    _check_keys(raw, ("model", "lora", "override_architecture"), path)
    if raw.get("override_architecture") is not None:
        raise ConfigError(f"{path}.override_architecture: not supported")
    parts = []
    for key in ("model", "lora"):
        part = raw.get(key)
        if isinstance(part, Mapping):
            part = _check_keys(part, ("path", "revision"), f"{path}.{key}")
            if "path" not in part:
                raise ConfigError(f"{path}.{key}.path: required")
            _optional_str(part["path"], f"{path}.{key}.path")
            _optional_str(part.get("revision"), f"{path}.{key}.revision")
            part = part["path"] + (f"@{part['revision']}" if part.get("revision") else "")
        if key == "model" and part is None:
            raise ConfigError(f"{path}.model: required")
        if part is not None:
            parts.append(part)
    return "+".join(str(p) for p in parts)


# --- parameter values --------------------------------------------------------------------------


def _gradient(value: Any, name: str) -> Scalar | tuple[Scalar, ...]:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        for i, entry in enumerate(value):
            if not isinstance(entry, _SCALARS):
                raise ConfigError(f"{name}[{i}]: expected a number, bool or string, got {entry!r}")
        return tuple(value)
    raise ConfigError(f"{name}: expected a scalar or a list of scalars (gradient), got {value!r}")


@dataclass(frozen=True)
class Conditional:
    """One entry of a filter list: ``value`` applies to tensors whose name contains ``filter``.

    Attributes:
        value: a scalar or a gradient.
        filter: a substring of the tensor name; None (or ``"*"``) matches every tensor.
    """

    value: Scalar | tuple[Scalar, ...]
    filter: str | None = None

    def __post_init__(self) -> None:
        _optional_str(self.filter, "filter")
        object.__setattr__(self, "value", _gradient(self.value, "value"))


ParameterValue: TypeAlias = Scalar | tuple[Scalar, ...] | tuple[Conditional, ...]
"""A parameter setting: a scalar, a gradient (tuple of scalars) or a filter list."""


def _conditional(raw: Any, name: str) -> Conditional:
    if isinstance(raw, Conditional):
        return raw
    _check_keys(raw, ("filter", "value"), name)
    if "value" not in raw:
        raise ConfigError(f"{name}.value: required")
    return _within(name, lambda: Conditional(value=raw["value"], filter=raw.get("filter")))


def _parameter_value(raw: Any, name: str) -> ParameterValue:
    if isinstance(raw, _SCALARS):
        return raw
    if isinstance(raw, (Mapping, Conditional)):
        return (_conditional(raw, name),)
    if isinstance(raw, (list, tuple)):
        if all(isinstance(entry, (Mapping, Conditional)) for entry in raw) and raw:
            return tuple(_conditional(entry, f"{name}[{i}]") for i, entry in enumerate(raw))
        for i, entry in enumerate(raw):
            if not isinstance(entry, _SCALARS):
                raise ConfigError(
                    f"{name}[{i}]: a list is either a gradient (all scalars) or a filter "
                    f"list (all {{filter, value}} entries), got {entry!r}"
                )
        return tuple(raw)
    raise ConfigError(
        f"{name}: expected a scalar, a gradient (list of numbers) or a filter list, got {raw!r}"
    )


def _parameters(raw: Any, name: str = "parameters") -> dict[str, ParameterValue]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping of parameter names to values, got {raw!r}")
    result = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{name}: parameter names are strings, got {key!r}")
        result[key] = _parameter_value(value, f"{name}.{key}")
    return result


def _scalars_of(value: ParameterValue, name: str) -> list[tuple[str, Scalar]]:
    """Every scalar in a setting with its path (for type checks)."""
    if isinstance(value, _SCALARS):
        return [(name, value)]
    found: list[tuple[str, Scalar]] = []
    for i, entry in enumerate(value):
        if isinstance(entry, Conditional):
            found += _scalars_of(entry.value, f"{name}[{i}].value")
        else:
            found.append((f"{name}[{i}]", entry))
    return found


def _yaml_value(value: ParameterValue) -> Any:
    if isinstance(value, _SCALARS):
        return value
    out: list[Any] = []
    for entry in value:
        if isinstance(entry, Conditional):
            item: dict[str, Any] = {} if entry.filter is None else {"filter": entry.filter}
            item["value"] = _yaml_value(entry.value)
            out.append(item)
        else:
            out.append(entry)
    return out


def _yaml_parameters(params: Mapping[str, ParameterValue]) -> dict[str, Any]:
    return {key: _yaml_value(value) for key, value in params.items()}


# --- inputs and slices -------------------------------------------------------------------------


def _check_unique_models(models: Sequence[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, model in enumerate(models):
        if model in seen:
            raise ConfigError(
                f"{name}[{i}].model: {model!r} is already {name}[{seen[model]}]; "
                "each model can be an input only once"
            )
        seen[model] = i


@dataclass(frozen=True)
class InputModelDefinition:
    """One entry of ``models:``: a model and its own parameters (highest precedence)."""

    model: str
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_model(self.model, "model")
        object.__setattr__(self, "parameters", _parameters(self.parameters))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (mergekit's schema)."""
        out: dict[str, Any] = {"model": self.model}
        if self.parameters:
            out["parameters"] = _yaml_parameters(self.parameters)
        return out


@dataclass(frozen=True)
class InputSliceDefinition:
    """One source of an output slice: layers ``[start, end)`` of ``model``.

    Attributes:
        model: the model reference.
        layer_range: ``(start, end)``, 0-based, end excluded, ``0 <= start < end``.
        parameters: this source's own parameters (highest precedence).
    """

    model: str
    layer_range: tuple[int, int]
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_model(self.model, "model")
        lr = self.layer_range
        if not (isinstance(lr, (list, tuple)) and len(lr) == 2 and all(_is_int(x) for x in lr)):
            raise ConfigError(f"layer_range: expected [start, end] (two integers), got {lr!r}")
        if not 0 <= lr[0] < lr[1]:
            raise ConfigError(
                f"layer_range: [{lr[0]}, {lr[1]}] is empty or negative; need 0 <= start < end "
                "(end is excluded)"
            )
        object.__setattr__(self, "layer_range", (lr[0], lr[1]))
        object.__setattr__(self, "parameters", _parameters(self.parameters))

    @property
    def num_layers(self) -> int:
        """``end - start``."""
        return self.layer_range[1] - self.layer_range[0]

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (mergekit's schema)."""
        out: dict[str, Any] = {"model": self.model, "layer_range": list(self.layer_range)}
        if self.parameters:
            out["parameters"] = _yaml_parameters(self.parameters)
        return out


@dataclass(frozen=True)
class OutputSliceDefinition:
    """A run of output layers merged from equally long layer ranges of its sources.

    Attributes:
        sources: the inputs, in order; all have the same number of layers.
        parameters: this slice's parameters (below the sources', above the global ones).
        base_model: the base for this slice; None: the top-level ``base_model``.
        residual_weight: accepted for compatibility; mergekit 0.1.5 does not use it.
    """

    sources: tuple[InputSliceDefinition, ...]
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    base_model: str | None = None
    residual_weight: float | None = None

    def __post_init__(self) -> None:
        sources = tuple(self.sources) if isinstance(self.sources, (list, tuple)) else None
        if not sources:
            raise ConfigError(f"sources: expected a non-empty list, got {self.sources!r}")
        for i, source in enumerate(sources):
            if not isinstance(source, InputSliceDefinition):
                raise ConfigError(f"sources[{i}]: expected an InputSliceDefinition")
            if source.num_layers != sources[0].num_layers:
                raise ConfigError(
                    f"sources[{i}].layer_range: {list(source.layer_range)} has "
                    f"{source.num_layers} layers but sources[0] has {sources[0].num_layers}; "
                    "all sources of a slice need the same number of layers"
                )
        _check_unique_models([s.model for s in sources], "sources")
        if self.base_model is not None:
            _check_model(self.base_model, "base_model")
        rw = self.residual_weight
        if rw is not None and (isinstance(rw, bool) or not isinstance(rw, (int, float))):
            raise ConfigError(f"residual_weight: expected a number, got {rw!r}")
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "parameters", _parameters(self.parameters))
        object.__setattr__(self, "residual_weight", None if rw is None else float(rw))

    @property
    def num_layers(self) -> int:
        """The number of output layers of this slice."""
        return self.sources[0].num_layers

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (mergekit's schema)."""
        out: dict[str, Any] = {"sources": [s.to_dict() for s in self.sources]}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.residual_weight is not None:
            out["residual_weight"] = self.residual_weight
        if self.parameters:
            out["parameters"] = _yaml_parameters(self.parameters)
        return out


def _one_of_models_slices(models: Any, slices: Any, what: str) -> tuple[Any, Any]:
    models = tuple(models) if models else None
    slices = tuple(slices) if slices else None
    if (models is None) == (slices is None):
        raise ConfigError(f"{what}: give exactly one of 'models' and 'slices'")
    if models is not None:
        for i, entry in enumerate(models):
            if not isinstance(entry, InputModelDefinition):
                raise ConfigError(f"models[{i}]: expected an InputModelDefinition")
        _check_unique_models([m.model for m in models], "models")
    for i, entry in enumerate(slices or ()):
        if not isinstance(entry, OutputSliceDefinition):
            raise ConfigError(f"slices[{i}]: expected an OutputSliceDefinition")
    return models, slices


@dataclass(frozen=True)
class OutputModuleDefinition:
    """One module of a multi-module model (``modules:`` form): its models or slices."""

    models: tuple[InputModelDefinition, ...] | None = None
    slices: tuple[OutputSliceDefinition, ...] | None = None
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        models, slices = _one_of_models_slices(self.models, self.slices, "models")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "slices", slices)
        object.__setattr__(self, "parameters", _parameters(self.parameters))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (mergekit's schema)."""
        out: dict[str, Any] = {}
        if self.models is not None:
            out["models"] = [m.to_dict() for m in self.models]
        if self.slices is not None:
            out["slices"] = [s.to_dict() for s in self.slices]
        if self.parameters:
            out["parameters"] = _yaml_parameters(self.parameters)
        return out


# --- tokenizer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelTokenEmbedding:
    """Take a token's embedding from ``model``, by ``token_id`` or by ``token`` (exactly one)."""

    model: str
    token_id: int | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        _check_model(self.model, "model")
        if (self.token_id is None) == (self.token is None):
            raise ConfigError("token_id: give exactly one of 'token_id' and 'token'")
        if self.token_id is not None and not _is_int(self.token_id):
            raise ConfigError(f"token_id: expected an integer, got {self.token_id!r}")
        _optional_str(self.token, "token")


@dataclass(frozen=True)
class ZeroEmbedding:
    """Initialise a token's embedding to zeros."""


@dataclass(frozen=True)
class TokenEmbeddingConfig:
    """How to build one token's embedding (``tokenizer.tokens.<token>``).

    Attributes:
        source: a model reference (take that model's embedding of the token), a
            :class:`ModelTokenEmbedding`, a :class:`ZeroEmbedding`, or None (mergekit's default).
        force: use ``source`` even where the merge already has an embedding.
    """

    source: str | ModelTokenEmbedding | ZeroEmbedding | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.source is not None and not isinstance(
            self.source, (ModelTokenEmbedding, ZeroEmbedding)
        ):
            _check_model(self.source, "source")
        if not isinstance(self.force, bool):
            raise ConfigError(f"force: expected true or false, got {self.force!r}")

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (mergekit's schema)."""
        out: dict[str, Any] = {}
        if isinstance(self.source, ModelTokenEmbedding):
            out["source"] = {"kind": "model_token", "model": self.source.model}
            if self.source.token_id is not None:
                out["source"]["token_id"] = self.source.token_id
            else:
                out["source"]["token"] = self.source.token
        elif isinstance(self.source, ZeroEmbedding):
            out["source"] = {"kind": "zero"}
        elif self.source is not None:
            out["source"] = self.source
        if self.force:
            out["force"] = True
        return out


def _check_tokenizer_source(value: Any, name: str) -> None:
    if value not in ("union", "base"):
        _check_model(value, name)


@dataclass(frozen=True)
class TokenizerConfig:
    """The ``tokenizer:`` section.

    Attributes:
        source: ``union`` (all inputs' vocabularies), ``base`` (the base model's; the first
            model's when there is no base) or a model reference.
        tokens: per-token embedding settings, keyed by the token string.
        pad_to_multiple_of: pad the vocabulary (embedding rows) to a multiple of this.
    """

    source: str = "union"
    tokens: Mapping[str, TokenEmbeddingConfig] | None = None
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        _check_tokenizer_source(self.source, "source")
        if self.tokens is not None:
            if not isinstance(self.tokens, Mapping):
                raise ConfigError(f"tokens: expected a mapping, got {self.tokens!r}")
            for key, value in self.tokens.items():
                if not isinstance(key, str) or not isinstance(value, TokenEmbeddingConfig):
                    raise ConfigError(f"tokens.{key}: expected a token string -> settings")
            object.__setattr__(self, "tokens", dict(self.tokens))
        pad = self.pad_to_multiple_of
        if pad is not None and not (_is_int(pad) and pad > 0):
            raise ConfigError(f"pad_to_multiple_of: expected a positive integer, got {pad!r}")

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (mergekit's schema)."""
        out: dict[str, Any] = {"source": self.source}
        if self.tokens is not None:
            out["tokens"] = {key: value.to_dict() for key, value in self.tokens.items()}
        if self.pad_to_multiple_of is not None:
            out["pad_to_multiple_of"] = self.pad_to_multiple_of
        return out


# --- the configuration -------------------------------------------------------------------------


def _dtype(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("torch."):
        value = value[len("torch.") :]
    if value not in _DTYPES:
        raise ConfigError(
            f"{name}: {value!r} is not a supported dtype"
            f"{closest_match_hint(str(value), _DTYPES)}; valid: {', '.join(_DTYPES)}"
        )
    return value


@dataclass(frozen=True)
class MergeConfiguration:
    """A static merge, in mergekit's schema (see the module docstring for what we add).

    Exactly one of ``models``, ``slices`` and ``modules`` is given. Construction validates
    everything against the merge method's :class:`~mol.merge.methods._registry.MethodSpec`:
    parameter names, scopes and types, required parameters, the base model and the number of
    inputs. Errors are :class:`~mol.ConfigError` naming the path of the offending key.

    Attributes:
        merge_method: a registered method name (``linear``, ``slerp``, ``ties``, ...).
        base_model: the base model reference, if any.
        models: the inputs of a whole-model merge.
        slices: the output slices of a layer-wise merge (frankenmerges).
        modules: per-module ``models``/``slices`` for multi-module models.
        parameters: the global parameters (lowest precedence before the defaults).
        dtype: the dtype tensors are loaded in for merging; None: as stored.
        out_dtype: the dtype of the saved tensors; None: ``dtype``.
        tokenizer_source: ``union``, ``base`` or a model reference (exclusive with tokenizer).
        tokenizer: the full tokenizer section.
        chat_template: a template name (``chatml``, ``alpaca``), ``auto`` or a Jinja template.
    """

    merge_method: str
    base_model: str | None = None
    models: tuple[InputModelDefinition, ...] | None = None
    slices: tuple[OutputSliceDefinition, ...] | None = None
    modules: Mapping[str, OutputModuleDefinition] | None = None
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    dtype: DType | None = None
    out_dtype: DType | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.merge_method, str):
            raise ConfigError(f"merge_method: expected a string, got {self.merge_method!r}")
        if self.base_model is not None:
            _check_model(self.base_model, "base_model")
        modules = dict(self.modules) if self.modules else None
        given = [name for name, v in (("models", self.models), ("slices", self.slices)) if v]
        if modules is not None:
            given.append("modules")
        if len(given) != 1:
            raise ConfigError(
                "models: give exactly one of 'models', 'slices' and 'modules'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if modules is None:
            models, slices = _one_of_models_slices(self.models, self.slices, "models")
            object.__setattr__(self, "models", models)
            object.__setattr__(self, "slices", slices)
        else:
            for name, module in modules.items():
                if not isinstance(name, str) or not isinstance(module, OutputModuleDefinition):
                    raise ConfigError(f"modules.{name}: expected a module definition")
            object.__setattr__(self, "models", None)
            object.__setattr__(self, "slices", None)
        object.__setattr__(self, "modules", modules)
        object.__setattr__(self, "parameters", _parameters(self.parameters))
        object.__setattr__(self, "dtype", _dtype(self.dtype, "dtype"))
        object.__setattr__(self, "out_dtype", _dtype(self.out_dtype, "out_dtype"))
        if self.tokenizer_source is not None:
            if self.tokenizer is not None:
                raise ConfigError("tokenizer_source: give either 'tokenizer_source' or 'tokenizer'")
            _check_tokenizer_source(self.tokenizer_source, "tokenizer_source")
        if self.tokenizer is not None and not isinstance(self.tokenizer, TokenizerConfig):
            raise ConfigError("tokenizer: expected a TokenizerConfig")
        _optional_str(self.chat_template, "chat_template")
        _validate_for_method(self, get_method(self.merge_method))

    @property
    def method(self) -> MethodSpec:
        """The registered merge method."""
        return get_method(self.merge_method)

    def referenced_models(self) -> list[str]:
        """Every model the merge reads (base included), each once, in order of appearance."""
        found = [self.base_model] if self.base_model else []
        for group in _groups(self):
            found += [model for model, _params, _path in group.inputs]
        return list(dict.fromkeys(found))

    def to_dict(self) -> dict[str, Any]:
        """Plain data in mergekit's schema (lists, dicts, scalars), defaults left out."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.models is not None:
            out["models"] = [m.to_dict() for m in self.models]
        if self.slices is not None:
            out["slices"] = [s.to_dict() for s in self.slices]
        if self.modules is not None:
            out["modules"] = {name: m.to_dict() for name, m in self.modules.items()}
        if self.parameters:
            out["parameters"] = _yaml_parameters(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.to_dict()
        if self.chat_template is not None:
            out["chat_template"] = self.chat_template
        return out

    def to_yaml(self) -> str:
        """YAML text that mergekit and :func:`load_merge_config` read back to this config."""
        return yaml.dump(
            self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )


# --- validation against the method -------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """The inputs of one output slice as mergekit normalises them, with YAML paths."""

    path: str
    inputs: tuple[tuple[str, Mapping[str, ParameterValue], str], ...]  # model, params, path
    shared: tuple[Mapping[str, ParameterValue], ...]  # slice, module, global parameters
    base_model: str | None
    base_path: str
    appended_base: bool  # models: form, base_model not listed: mergekit appends it


def _groups(config: MergeConfiguration) -> list[_Group]:
    tops: list[tuple[str, Any, Mapping[str, ParameterValue]]]
    if config.modules is not None:
        tops = [(f"modules.{name}.", m, m.parameters) for name, m in config.modules.items()]
    else:
        tops = [("", config, {})]
    groups = []
    for prefix, holder, module_params in tops:
        if holder.models is not None:
            inputs = [
                (m.model, m.parameters, f"{prefix}models[{i}]") for i, m in enumerate(holder.models)
            ]
            base = config.base_model
            appended = base is not None and base not in [m for m, _, _ in inputs]
            if appended:
                inputs.append((base, {}, "base_model"))
            shared = ({}, module_params, config.parameters)
            groups.append(
                _Group(f"{prefix}models", tuple(inputs), shared, base, "base_model", appended)
            )
            continue
        for i, out in enumerate(holder.slices):
            path = f"{prefix}slices[{i}]"
            inputs = [
                (s.model, s.parameters, f"{path}.sources[{j}]") for j, s in enumerate(out.sources)
            ]
            own_base = out.base_model is not None
            groups.append(
                _Group(
                    path=path,
                    inputs=tuple(inputs),
                    shared=(out.parameters, module_params, config.parameters),
                    base_model=out.base_model if own_base else config.base_model,
                    base_path=f"{path}.base_model" if own_base else "base_model",
                    appended_base=False,
                )
            )
    return groups


def _parameter_dicts(config: MergeConfiguration):
    """Yield ``(path, parameters, per_input_level)`` for every parameters mapping."""
    yield "parameters", config.parameters, False
    holders: list[tuple[str, Any]] = [("", config)]
    if config.modules is not None:
        holders = [(f"modules.{name}.", m) for name, m in config.modules.items()]
        for prefix, module in holders:
            yield f"{prefix}parameters", module.parameters, False
    for prefix, holder in holders:
        for i, m in enumerate(holder.models or ()):
            yield f"{prefix}models[{i}].parameters", m.parameters, True
        for i, out in enumerate(holder.slices or ()):
            yield f"{prefix}slices[{i}].parameters", out.parameters, False
            for j, source in enumerate(out.sources):
                yield f"{prefix}slices[{i}].sources[{j}].parameters", source.parameters, True


def _count_problem(count: int, low: int | None, high: int | None) -> str | None:
    low = low or 0
    if low <= count and (high is None or count <= high):
        return None
    if high is None:
        return f"at least {low}"
    return f"exactly {low}" if low == high else f"between {low} and {high}"


def _has_value(params: Mapping[str, ParameterValue], name: str) -> bool:
    return name in params and params[name] != ()


def _validate_for_method(config: MergeConfiguration, spec: MethodSpec) -> None:
    for path, params, per_input_level in _parameter_dicts(config):
        for name, value in params.items():
            try:
                pspec = spec.param(name)
            except ConfigError as exc:
                raise ConfigError(f"{path}.{name}: {exc}") from None
            if per_input_level and pspec.scope == "global":
                raise ConfigError(
                    f"{path}.{name}: {name!r} is a global parameter of merge method "
                    f"{spec.name!r} (one value for all inputs); set it under the top-level or "
                    "slice 'parameters' (mergekit silently ignores it here)"
                )
            for where, scalar in _scalars_of(value, f"{path}.{name}"):
                try:
                    coerce_scalar(scalar, pspec.type)
                except ValueError as exc:
                    raise ConfigError(f"{where}: {exc} for parameter {name!r}") from None

    for group in _groups(config):
        models = [model for model, _, _ in group.inputs]
        base = None if spec.base == "ignored" else group.base_model
        if spec.base == "required" and base is None:
            raise ConfigError(
                f"{group.base_path}: merge method {spec.name!r} requires a base_model"
                + (" (set it on the slice or at the top level)" if group.path != "models" else "")
            )
        if base is not None and base not in models:
            raise ConfigError(
                f"{group.base_path}: base model {base!r} is not a source of {group.path} "
                f"({', '.join(models)})"
            )
        has_base = base is not None
        for what, count, low, high in (
            ("inputs", len(models), spec.min_inputs, spec.max_inputs),
            ("non-base inputs", len(models) - has_base, spec.min_non_base, spec.max_non_base),
        ):
            if what != "inputs" and spec.min_non_base is None and spec.max_non_base is None:
                continue
            expected = _count_problem(count, low, high)
            if expected is not None:
                note = " (base_model included)" if has_base and what == "inputs" else ""
                raise ConfigError(
                    f"{group.path}: merge method {spec.name!r} takes {expected} {what}{note}; "
                    f"got {count}: {', '.join(models)}"
                )

        for pspec in spec.params:
            if not pspec.required:
                continue
            if pspec.scope == "global":
                if not any(_has_value(level, pspec.name) for level in group.shared):
                    raise ConfigError(
                        f"parameters.{pspec.name}: merge method {spec.name!r} requires "
                        f"parameter {pspec.name!r} ({group.path} has none)"
                    )
                continue
            for model, params, path in group.inputs:
                if pspec.scope == "per_non_base" and model == base:
                    continue
                if _has_value(params, pspec.name) or any(
                    _has_value(level, pspec.name) for level in group.shared
                ):
                    continue
                if group.appended_base and path == "base_model":
                    raise ConfigError(
                        f"base_model: {model!r} is not listed under models, so it is merged as "
                        f"one more input (as mergekit does) and merge method {spec.name!r} "
                        f"needs {pspec.name!r} for it: list it under models with a "
                        f"{pspec.name!r} or set a global one"
                    )
                raise ConfigError(
                    f"{path}.parameters.{pspec.name}: merge method {spec.name!r} requires "
                    f"{pspec.name!r} for {model!r} and none is given (here or in the slice or "
                    "global parameters)"
                )


# --- YAML --------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Lists of numbers (gradients, layer ranges) in flow style, like mergekit's dumper."""

    def represent_list(self, data: list[Any]) -> yaml.SequenceNode:
        flow = all(isinstance(e, (int, float)) for e in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def _read_source(source: str | Path | Mapping[str, Any]) -> Any:
    return read_yaml(source, "merge_method: ..., models: ...")


_TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "modules",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
)


def _parse_model(raw: Any, path: str) -> InputModelDefinition:
    _check_keys(raw, ("model", "parameters"), path)
    if "model" not in raw:
        raise ConfigError(f"{path}.model: required")
    model = _model_ref_from_yaml(raw["model"], f"{path}.model")
    return _within(path, lambda: InputModelDefinition(model, raw.get("parameters")))


def _parse_source(raw: Any, path: str) -> InputSliceDefinition:
    _check_keys(raw, ("model", "layer_range", "parameters"), path)
    for key in ("model", "layer_range"):
        if key not in raw:
            raise ConfigError(f"{path}.{key}: required")
    model = _model_ref_from_yaml(raw["model"], f"{path}.model")
    return _within(
        path, lambda: InputSliceDefinition(model, raw["layer_range"], raw.get("parameters"))
    )


def _parse_slice(raw: Any, path: str) -> OutputSliceDefinition:
    _check_keys(raw, ("sources", "base_model", "residual_weight", "parameters"), path)
    sources = _as_list(raw.get("sources"), f"{path}.sources") or []
    parsed = [_parse_source(s, f"{path}.sources[{j}]") for j, s in enumerate(sources)]
    base = _model_ref_from_yaml(raw.get("base_model"), f"{path}.base_model")
    return _within(
        path,
        lambda: OutputSliceDefinition(
            sources=tuple(parsed),
            parameters=raw.get("parameters"),
            base_model=base,
            residual_weight=raw.get("residual_weight"),
        ),
    )


def _parse_models_and_slices(raw: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    models = _as_list(raw.get("models"), f"{prefix}models")
    slices = _as_list(raw.get("slices"), f"{prefix}slices")
    return {
        "models": None
        if models is None
        else tuple(_parse_model(m, f"{prefix}models[{i}]") for i, m in enumerate(models)),
        "slices": None
        if slices is None
        else tuple(_parse_slice(s, f"{prefix}slices[{i}]") for i, s in enumerate(slices)),
    }


def _parse_token_source(raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        return raw
    kind = raw.get("kind")
    if kind == "zero":
        _check_keys(raw, ("kind",), path)
        return ZeroEmbedding()
    if kind == "model_token":
        _check_keys(raw, ("kind", "model", "token_id", "token"), path)
        if "model" not in raw:
            raise ConfigError(f"{path}.model: required")
        model = _model_ref_from_yaml(raw["model"], f"{path}.model")
        return _within(
            path, lambda: ModelTokenEmbedding(model, raw.get("token_id"), raw.get("token"))
        )
    raise ConfigError(
        f"{path}.kind: expected 'model_token' or 'zero' (or give a model name), got {kind!r}"
    )


def _parse_tokenizer(raw: Any, path: str) -> TokenizerConfig | None:
    if raw is None:
        return None
    _check_keys(raw, ("source", "tokens", "pad_to_multiple_of"), path)
    tokens = raw.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, Mapping):
            raise ConfigError(f"{path}.tokens: expected a mapping of token -> settings")
        parsed = {}
        for token, settings in tokens.items():
            where = f"{path}.tokens.{token}"
            settings = _check_keys(settings or {}, ("source", "force"), where)
            source = _parse_token_source(settings.get("source"), f"{where}.source")
            parsed[token] = _within(
                where,
                lambda s=source, st=settings: TokenEmbeddingConfig(s, st.get("force", False)),
            )
        tokens = parsed
    source = _model_ref_from_yaml(raw.get("source", "union"), f"{path}.source")
    return _within(path, lambda: TokenizerConfig(source, tokens, raw.get("pad_to_multiple_of")))


def load_merge_config(source: str | Path | Mapping[str, Any]) -> MergeConfiguration:
    """Load and fully validate a mergekit-style merge configuration.

    Args:
        source: a YAML file (``Path``, or a string ending in ``.yml``/``.yaml`` or naming an
            existing file), YAML text, or the already-parsed mapping.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: anything invalid; the message names the path of the key (``models[1].
            parameters.densty``) and, for misspellings, the closest valid name.
    """
    raw = _check_keys(_read_source(source), _TOP_KEYS, "")
    if "merge_method" not in raw:
        raise ConfigError("merge_method: required")
    kwargs: dict[str, Any] = {key: raw.get(key) for key in _TOP_KEYS}
    kwargs.update(_parse_models_and_slices(raw, ""))
    modules = raw.get("modules")
    if modules is not None:
        if not isinstance(modules, Mapping):
            raise ConfigError("modules: expected a mapping of module name -> definition")
        parsed_modules = {}
        for name, module in modules.items():
            prefix = f"modules.{name}."
            _check_keys(module, ("models", "slices", "parameters"), f"modules.{name}")
            parts = _parse_models_and_slices(module, prefix)
            parsed_modules[name] = _within(
                f"modules.{name}",
                lambda p=parts, m=module: OutputModuleDefinition(
                    parameters=m.get("parameters"), **p
                ),
            )
        kwargs["modules"] = parsed_modules
    kwargs["parameters"] = raw.get("parameters")
    kwargs["base_model"] = _model_ref_from_yaml(raw.get("base_model"), "base_model")
    source_ref = raw.get("tokenizer_source")
    if source_ref not in ("union", "base"):
        kwargs["tokenizer_source"] = _model_ref_from_yaml(source_ref, "tokenizer_source")
    kwargs["tokenizer"] = _parse_tokenizer(raw.get("tokenizer"), "tokenizer")
    return MergeConfiguration(**kwargs)

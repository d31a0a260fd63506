"""Resolve a merge parameter's value for one tensor, exactly as mergekit 0.1.5 does.

Pure functions: no file access, no tensors. The rules below were read from mergekit 0.1.5
(``config.evaluate_setting``, ``config.ConfigReader.parameter_sources``,
``parameter_resolver.resolve_parameter(s)`` and ``plan.MergePlanner``) and are checked against
it by a differential test in ``tests/test_merge_config.py``.

Value forms (what a parameter may be set to in YAML)
    * **scalar**: bool, int, float or str, converted to the parameter's type like pydantic's
      lax mode: ``"1e-3"`` (PyYAML reads ``1e-3`` as a string) is ``0.001`` for a float; a bool
      accepts ``0``/``1`` and ``yes``/``no``/``on``/``off``/``true``/``false``/``y``/``n``/``t``/
      ``f`` in any case; an int accepts integral floats (``2.0``); a float accepts bools.
    * **gradient**: a list of scalars ``[v0, ..., v(k-1)]`` evaluated at a position ``t`` in
      ``[0, 1]``: ``scaled = t * (k - 1)``, ``i0 = int(scaled)``, ``i1 = min(k - 1, i0 + 1)``,
      ``frac = scaled - i0`` and the value is ``(1 - frac) * v[i0] + frac * v[i1]`` (then
      converted to the type: an int parameter must land on an integer). When the converted
      entries are not all numbers (a bool parameter) there is no interpolation: the value is
      ``v[int(t * (k - 1))]``. An empty list gives no value.
    * **filter list**: a list of ``{filter: str, value: scalar | gradient}`` (a single such dict
      counts as a one-entry list). Entries are tried in order; the first whose ``filter`` is
      missing/null, ``"*"``, or a *substring* of the tensor name wins (no regex, no glob, no
      word boundary: ``mlp`` matches ``...mlp.up_proj.weight``, ``layers.1`` also matches
      ``layers.12``), and its value is evaluated at ``t``. No matching entry gives no value.

Gradient position ``t``
    * A layer tensor: ``t = i / (n - 1)`` where ``i`` is the layer's 0-based position *within
      its output slice* and ``n`` is the slice's number of layers; ``t = 1`` when ``n == 1``
      (a one-layer slice takes the *last* gradient entry). In the ``models:`` form the whole
      model is one slice: ``i`` is the layer index and ``n`` the model's number of layers.
      Each slice restarts the gradient: ``layer_range`` never enters ``t``.
    * A tensor outside the layers (embeddings before them; final norm and ``lm_head`` after
      them): ``t = 0``, so a gradient gives its first entry.

Precedence (``ConfigReader.parameter_sources``), first level that gives a value wins
    For a per-input parameter of input model ``m``:
        1. ``parameters`` of the ``models:`` entry / slice source whose model is ``m``,
        2. the output slice's ``parameters``,
        3. the module's ``parameters`` (``modules:`` form only),
        4. the top-level ``parameters``,
        5. the method's default; a required parameter with no value is an error.
    For a global (one value per tensor) parameter the same without level 1: mergekit never
    reads per-model values of a global parameter (it ignores them silently; we reject them when
    the configuration is loaded). A level whose setting gives no value (a filter list with no
    matching entry, an empty list) is skipped, so a filter list without a catch-all entry falls
    back to the next level rather than to the default.

Tensor names and inputs
    * Filters of global parameters match the *output* tensor name; filters of per-input
      parameters match that *input's* tensor name (in a frankenmerge, output layer 40 may be
      ``model.layers.20...`` of the source: the filter sees ``layers.20``).
    * Per-non-base parameters are not resolved for the base model (values given there are
      ignored), so their lists skip the base.
    * The ``models:`` form is one output slice whose sources are the models in order, each with
      ``layer_range [0, n]``; a ``base_model`` that is not listed is appended as the last input
      (with no parameters) whatever the method's base policy, as mergekit does.
    * ``slices:``: output layers are the slices' layers in order; output layer ``o`` in slice
      ``s`` at position ``i`` reads layer ``layer_range[0] + i`` of every source of ``s``. The
      base of a slice is its own ``base_model``, else the top-level one. Tensors before the
      layers use the first slice (its sources, parameters and base), tensors after them the
      last slice, both at ``t = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mol._errors import ConfigError

if TYPE_CHECKING:
    from mol.merge.config import MergeConfiguration
    from mol.merge.methods._registry import MethodSpec, ParamSpec

__all__ = [
    "coerce_scalar",
    "gradient_position",
    "evaluate_setting",
    "resolve_value",
    "resolve_params",
    "LayerSource",
    "OutputLayer",
    "output_layers",
    "slice_inputs",
    "slice_base_model",
]

_SCALARS = (bool, int, float, str)


class _Unset:
    pass


_UNSET = _Unset()
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def coerce_scalar(value: Any, type_: type) -> Any:
    """Convert one YAML scalar to a parameter's type the way pydantic's lax mode does.

    Args:
        value: a bool, int, float or str as read from YAML.
        type_: ``float``, ``int``, ``bool`` or ``str`` (a :class:`ParamSpec` type).

    Returns:
        The converted value.

    Raises:
        ValueError: the value cannot be read as ``type_`` (``"high"`` for a float, ``2.5`` for
            an int, ``2`` for a bool).
    """
    if type_ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
    elif type_ is int:
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif type_ is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif type_ is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, type_):
        return value
    raise ValueError(f"expected {getattr(type_, '__name__', type_)}, got {value!r}")


def gradient_position(layer_index: int | None, num_layers: int) -> float:
    """The position ``t`` in ``[0, 1]`` at which gradients are read (mergekit's ``t``).

    Args:
        layer_index: 0-based index of the layer within its output slice (``models:`` form: the
            layer index), or None for tensors outside the layers.
        num_layers: number of layers of that slice (``models:`` form: of the models).

    Returns:
        ``layer_index / (num_layers - 1)``; ``1.0`` for a one-layer slice; ``0.0`` when
        ``layer_index`` is None.
    """
    if layer_index is None:
        return 0.0
    if not 0 <= layer_index < num_layers:
        raise ValueError(f"layer_index {layer_index} is outside a slice of {num_layers} layers")
    return layer_index / (num_layers - 1) if num_layers > 1 else 1.0


def _filter_and_value(entry: Any) -> tuple[str | None, Any]:
    if isinstance(entry, Mapping):
        return entry.get("filter"), entry["value"]
    return entry.filter, entry.value


def evaluate_setting(setting: Any, *, tensor_name: str, t: float, type_: type = float) -> Any:
    """mergekit's ``evaluate_setting``: a scalar, gradient or filter list at position ``t``.

    Args:
        setting: a scalar, a sequence of scalars (gradient), a sequence of
            :class:`~mol.merge.config.Conditional` (or ``{filter, value}`` dicts), or one of those.
        tensor_name: the name filters are matched against (substring match).
        t: the gradient position (see :func:`gradient_position`).
        type_: the parameter's type; every scalar is converted with :func:`coerce_scalar`.

    Returns:
        The value, or None when the setting gives none (no filter matches, empty list).

    Raises:
        ValueError: a scalar cannot be converted to ``type_``.
    """
    if isinstance(setting, _SCALARS):
        return coerce_scalar(setting, type_)
    if isinstance(setting, Mapping) or hasattr(setting, "filter"):
        setting = (setting,)
    if not isinstance(setting, Sequence):
        raise TypeError(f"unexpected parameter setting {setting!r}")
    if not setting:
        return None
    if all(isinstance(entry, _SCALARS) for entry in setting):
        values = [coerce_scalar(entry, type_) for entry in setting]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[int(t * (len(values) - 1))]
        # Same float operations as mergekit, so results agree bit for bit.
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return coerce_scalar((1 - frac) * values[i0] + frac * values[i1], type_)
    for entry in setting:
        if isinstance(entry, _SCALARS):
            raise TypeError(f"a parameter list mixes scalars and filters: {setting!r}")
        filter_, value = _filter_and_value(entry)
        if filter_ is None or filter_ == "*" or (tensor_name and filter_ in tensor_name):
            return evaluate_setting(value, tensor_name=tensor_name, t=t, type_=type_)
    return None


def resolve_value(
    value: Any,
    *,
    tensor_name: str,
    layer_index: int | None,
    num_layers: int,
    type_: type = float,
) -> Any:
    """One setting's value for one tensor: scalar, gradient or filter list, as mergekit does.

    Args:
        value: the setting as written (see :func:`evaluate_setting`).
        tensor_name: the tensor's name, matched by filters as a substring.
        layer_index: the layer's position within its output slice, None outside the layers.
        num_layers: the slice's number of layers.
        type_: the parameter's type.

    Returns:
        The value, or None when no filter entry applies (the caller falls back to the next
        level of precedence; see the module docstring).
    """
    t = gradient_position(layer_index, num_layers)
    return evaluate_setting(value, tensor_name=tensor_name, t=t, type_=type_)


# --- slices ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """One output slice after mergekit's normalisation of the ``models:`` form."""

    inputs: tuple[tuple[str, Mapping[str, Any]], ...]  # (model, its own parameters)
    ranges: tuple[tuple[int, int] | None, ...]  # layer_range per input; None in models: form
    parameters: Mapping[str, Any]  # the slice's parameters
    module_parameters: Mapping[str, Any]
    base_model: str | None


def _groups(config: MergeConfiguration, module: str | None) -> tuple[_Group, ...]:
    if config.modules is not None:
        if module is None:
            if len(config.modules) != 1:
                raise ConfigError(f"modules: name one of {', '.join(config.modules)}")
            module = next(iter(config.modules))
        if module not in config.modules:
            raise ConfigError(f"modules: no module {module!r}; have {', '.join(config.modules)}")
        definition = config.modules[module]
        models, slices, module_params = (
            definition.models,
            definition.slices,
            definition.parameters,
        )
    else:
        models, slices, module_params = config.models, config.slices, {}
    if models is not None:
        inputs = [(m.model, m.parameters) for m in models]
        if config.base_model is not None and config.base_model not in {m for m, _ in inputs}:
            inputs.append((config.base_model, {}))
        return (_Group(tuple(inputs), (None,) * len(inputs), {}, module_params, config.base_model),)
    assert slices is not None
    return tuple(
        _Group(
            inputs=tuple((s.model, s.parameters) for s in out.sources),
            ranges=tuple(s.layer_range for s in out.sources),
            parameters=out.parameters,
            module_parameters=module_params,
            base_model=out.base_model if out.base_model is not None else config.base_model,
        )
        for out in slices
    )


def slice_inputs(
    config: MergeConfiguration, *, slice_index: int = 0, module: str | None = None
) -> tuple[str, ...]:
    """The input models of an output slice, in mergekit's order.

    In the ``models:`` form (one slice) these are the listed models followed by ``base_model``
    when it is not listed. Use ``slice_index=0`` for tensors before the layers and ``-1`` for
    tensors after them.
    """
    return tuple(model for model, _ in _groups(config, module)[slice_index].inputs)


def slice_base_model(
    config: MergeConfiguration, *, slice_index: int = 0, module: str | None = None
) -> str | None:
    """The base model of an output slice: the slice's ``base_model``, else the top-level one."""
    return _groups(config, module)[slice_index].base_model


@dataclass(frozen=True)
class LayerSource:
    """Where one input of an output layer comes from."""

    model: str
    layer_index: int


@dataclass(frozen=True)
class OutputLayer:
    """One layer of the merged model and the input layers it is computed from.

    Attributes:
        index: the output layer index.
        slice_index: which output slice it belongs to.
        index_in_slice: its 0-based position in that slice (``layer_index`` for resolution).
        slice_length: the slice's number of layers (``num_layers`` for resolution).
        sources: one per input of the slice, in input order.
    """

    index: int
    slice_index: int
    index_in_slice: int
    slice_length: int
    sources: tuple[LayerSource, ...]

    @property
    def t(self) -> float:
        """The gradient position of this layer (see :func:`gradient_position`)."""
        return gradient_position(self.index_in_slice, self.slice_length)


def output_layers(
    config: MergeConfiguration, *, num_layers: int | None = None, module: str | None = None
) -> tuple[OutputLayer, ...]:
    """Map every output layer to its slice, its position in the slice and its source layers.

    Args:
        config: a loaded configuration.
        num_layers: the input models' number of layers; needed (only) in the ``models:`` form,
            where every input must have this many layers.
        module: the module, in the ``modules:`` form with more than one module.

    Returns:
        The output layers in order.
    """
    result: list[OutputLayer] = []
    for slice_index, group in enumerate(_groups(config, module)):
        if group.ranges[0] is None:
            if num_layers is None or num_layers < 1:
                raise ValueError("num_layers (the models' layer count) is needed for models:")
            ranges = [(0, num_layers)] * len(group.inputs)
        else:
            ranges = [r for r in group.ranges if r is not None]
        length = ranges[0][1] - ranges[0][0]
        for i in range(length):
            sources = tuple(
                LayerSource(model, start + i)
                for (model, _), (start, _end) in zip(group.inputs, ranges, strict=True)
            )
            result.append(OutputLayer(len(result), slice_index, i, length, sources))
    return tuple(result)


# --- parameters --------------------------------------------------------------------------------


def _resolve_one(
    spec: ParamSpec,
    levels: Sequence[Mapping[str, Any]],
    *,
    tensor_name: str,
    t: float,
    where: str,
) -> Any:
    for level in levels:
        if spec.name in level:
            try:
                value = evaluate_setting(
                    level[spec.name], tensor_name=tensor_name, t=t, type_=spec.type
                )
            except ValueError as exc:
                raise ConfigError(f"parameter {spec.name!r} for {where}: {exc}") from None
            if value is not None:
                return value
    if spec.required:
        raise ConfigError(
            f"missing required parameter {spec.name!r} for {where}: no entry applies to it "
            "(a filter list needs a final entry without 'filter' as the default)"
        )
    if spec.default is None:
        return None
    return coerce_scalar(spec.default, spec.type)


def resolve_params(
    config: MergeConfiguration,
    method_spec: MethodSpec,
    *,
    tensor_name: str,
    input_models: Sequence[str],
    layer_index: int | None = None,
    num_layers: int | None = None,
    t: float | None = None,
    base_index: int | None | _Unset = _UNSET,
    input_tensor_names: Sequence[str] | None = None,
    slice_index: int = 0,
    module: str | None = None,
) -> dict[str, Any]:
    """Every parameter of ``method_spec`` for one output tensor, as mergekit resolves them.

    Args:
        config: the loaded configuration.
        method_spec: the merge method (its parameters, scopes, defaults and base policy).
        tensor_name: the output tensor's name (filters of global parameters match it).
        input_models: the inputs of this tensor, in the order the method receives them
            (normally :func:`slice_inputs`).
        layer_index: the tensor's layer position within its output slice (``models:`` form:
            its layer index); None for tensors outside the layers.
        num_layers: the number of layers of that output slice (``models:`` form: the models').
        t: the gradient position, instead of ``layer_index``/``num_layers`` (see
            :func:`gradient_position`).
        base_index: position of the base in ``input_models``, or None for no base; when
            left out, the slice's base model (none if the method ignores its base).
        input_tensor_names: each input's own tensor name, aligned with ``input_models``
            (filters of per-input parameters match it); default ``tensor_name`` for all.
        slice_index: the output slice the tensor belongs to; ``0`` for tensors before the
            layers, ``-1`` after them. Ignored in the ``models:`` form (one slice).
        module: the module, in the ``modules:`` form with more than one module.

    Returns:
        ``{name: value}`` for each :class:`ParamSpec`: a scalar for ``global``; a list aligned
        with ``input_models`` for ``per_input``; a list aligned with the inputs other than the
        base for ``per_non_base`` (the base is the slice's, and none for a method whose base
        policy is ``ignored``).

    Raises:
        ConfigError: a required parameter has no value for this tensor, or a value does not
            convert to the parameter's type; the message names the parameter and tensor.
    """
    groups = _groups(config, module)
    group = groups[0] if len(groups) == 1 else groups[slice_index]
    names = list(input_tensor_names) if input_tensor_names is not None else None
    if names is None:
        names = [tensor_name] * len(input_models)
    if len(names) != len(input_models):
        raise ValueError("input_tensor_names must be aligned with input_models")
    if t is None:
        if layer_index is not None and num_layers is None:
            raise ValueError("num_layers is needed with layer_index")
        t = gradient_position(layer_index, num_layers or 0)
    shared = (group.parameters, group.module_parameters, config.parameters)
    if isinstance(base_index, _Unset):
        base = None if method_spec.base == "ignored" else group.base_model
    else:
        base = None if base_index is None else input_models[base_index]

    result: dict[str, Any] = {}
    for spec in method_spec.params:
        if spec.scope == "global":
            result[spec.name] = _resolve_one(
                spec, shared, tensor_name=tensor_name, t=t, where=tensor_name
            )
            continue
        values = []
        for model, name in zip(input_models, names, strict=True):
            if spec.scope == "per_non_base" and model == base:
                continue
            own = tuple(params for m, params in group.inputs if m == model)
            values.append(
                _resolve_one(spec, own + shared, tensor_name=name, t=t, where=f"{model}: {name}")
            )
        result[spec.name] = values
    return result

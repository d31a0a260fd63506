"""The merge-method registry: each method is a pure tensor function plus a typed spec.

A method function is called once per output tensor::

    fn(tensors, *, base_index, generator, **params) -> Tensor

* ``tensors``: every input tensor for this output tensor, in input order, already converted
  to the compute dtype (float32 unless asked otherwise), all of one shape.
* ``base_index``: position of the base model's tensor in ``tensors``, or None.
* ``generator``: a seeded ``torch.Generator`` for randomised methods (DARE), else None.
* ``params``: one entry per :class:`ParamSpec`: a scalar for ``scope="global"``; a list aligned
  with ``tensors`` for ``scope="per_input"``; a list aligned with the non-base tensors (input
  order, base skipped) for ``scope="per_non_base"``.

It returns a tensor of the inputs' shape in the compute dtype. Functions do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mol._errors import ConfigError, closest_match_hint

__all__ = ["REQUIRED", "ParamSpec", "MethodSpec", "register", "get_method", "list_methods"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a parameter that has none: the configuration must give it."""

Scope = Literal["global", "per_input", "per_non_base"]
BasePolicy = Literal["required", "optional", "ignored"]
MissingTensorPolicy = Literal["error", "passthrough_singleton", "base_or_skip"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method.

    Attributes:
        name: the YAML key (``weight``, ``density``, ``t``, ...).
        type: ``float``, ``int`` or ``bool``.
        default: the value when the configuration gives none, or :data:`REQUIRED`.
        scope: ``global`` (one value), ``per_input`` (one per input model) or
            ``per_non_base`` (one per input model other than the base).
        doc: one line for ``mol-merge`` help and model cards.
    """

    name: str
    type: type
    default: Any = REQUIRED
    scope: Scope = "global"
    doc: str = ""

    @property
    def required(self) -> bool:
        """True when the configuration must set this parameter."""
        return self.default is REQUIRED


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method: its function, parameters and input contract.

    Attributes:
        name: the ``merge_method`` value in YAML.
        fn: the pure tensor function (see the module docstring).
        params: the parameters it accepts; any other name is a configuration error.
        base: whether a ``base_model`` is required, optional, or ignored (not an input).
        min_inputs / max_inputs: bounds on the number of input tensors (base included).
        min_non_base / max_non_base: bounds on the non-base inputs (None: unchecked).
        missing_tensor: what to do when a tensor exists in only some inputs:
            ``error``; ``passthrough_singleton`` (one input has it: copy it);
            ``base_or_skip`` (take the base's tensor, or leave the tensor out).
        randomized: the function draws random numbers from ``generator``.
        reference: the paper or page that defines the method.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[ParamSpec, ...]
    base: BasePolicy = "ignored"
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int | None = None
    max_non_base: int | None = None
    missing_tensor: MissingTensorPolicy = "error"
    randomized: bool = False
    reference: str = ""

    def param(self, name: str) -> ParamSpec:
        """The spec of parameter ``name``. Raises ConfigError naming the closest valid one."""
        for spec in self.params:
            if spec.name == name:
                return spec
        valid = [p.name for p in self.params]
        raise ConfigError(
            f"merge method {self.name!r} has no parameter {name!r}"
            f"{closest_match_hint(name, valid)}; valid: {', '.join(valid) or 'none'}"
        )


_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method. Raises ValueError if the name is taken (registries fail loudly)."""
    if spec.name in _METHODS:
        raise ValueError(f"merge method {spec.name!r} is already registered")
    _METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The method called ``name``. Raises ConfigError listing the valid names."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown merge_method {name!r}{closest_match_hint(name, _METHODS)}; "
            f"valid: {', '.join(sorted(_METHODS))}"
        ) from None


def list_methods() -> list[MethodSpec]:
    """Every registered method, sorted by name."""
    return [_METHODS[name] for name in sorted(_METHODS)]

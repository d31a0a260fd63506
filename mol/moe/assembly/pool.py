"""A named set of causal LMs: the base (``_pretrained_``) and its fine-tuned experts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from mol._errors import ConfigError

__all__ = ["CausalLMPool", "PRETRAINED"]

PRETRAINED = "_pretrained_"
"""The pool key of the base model (the seed API's name)."""

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
}


class CausalLMPool:
    """The models an MoE is assembled from; holds paths, loads nothing until asked.

    Args:
        models: ``{"_pretrained_": base, "expert_1": path, ...}``; every key but
            ``_pretrained_`` is an expert, in insertion order (that is the router's order).
        tokenizer: tokenizer path for gate prompts and the output; None uses the base's.
        model_kwargs: ``{"torch_dtype": "bfloat16"}`` (or ``dtype``) sets the output dtype;
            no other keys are accepted.

    Raises:
        ConfigError: no ``_pretrained_`` entry, no experts, a non-string path, or an unknown
            ``model_kwargs`` key or dtype.
    """

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike],
        tokenizer: str | os.PathLike | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if PRETRAINED not in models:
            raise ConfigError(f"models: needs a {PRETRAINED!r} entry (the base model)")
        self.models = {name: str(path) for name, path in models.items()}
        if len(self.models) < 2:
            raise ConfigError("models: needs at least one expert besides the base model")
        self.tokenizer = None if tokenizer is None else str(tokenizer)
        self.dtype: str | None = None
        for key, value in (model_kwargs or {}).items():
            if key not in ("torch_dtype", "dtype"):
                raise ConfigError(
                    f"model_kwargs.{key}: unknown key; valid keys: torch_dtype, dtype"
                )
            if value not in _DTYPE_NAMES:
                raise ConfigError(f"model_kwargs.{key}: {value!r} is not float32/float16/bfloat16")
            self.dtype = _DTYPE_NAMES[value]

    @property
    def base_model(self) -> str:
        """Path of the ``_pretrained_`` model."""
        return self.models[PRETRAINED]

    @property
    def expert_names(self) -> list[str]:
        """Expert names in router order."""
        return [name for name in self.models if name != PRETRAINED]

    def __repr__(self) -> str:
        return f"CausalLMPool(base={self.base_model!r}, experts={self.expert_names})"

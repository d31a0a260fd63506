"""The seed documents' Python API: ``MergeConfig`` and one class per method.

::

    config = MergeConfig(method="slerp", models=["a", "b"], parameters={"t": 0.5},
                         output_path="./merged")
    slerp = SlerpMerge(config)
    models = slerp.load_models()      # lazy, memory-mapped handles (no weights read yet)
    merged = slerp.merge(models)      # every output tensor, in memory
    slerp.save_merged_model(merged)   # safetensors + config + tokenizer + card, atomically

For models too large for memory use :func:`mol.merge.run_merge` (or ``mol-merge``), which
streams tensor by tensor; both paths compute identical tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mol._errors import ConfigError
from mol.io import LazyCheckpoint
from mol.merge._execute import merge_in_memory, write_merge
from mol.merge._plan import MergeOptions, MergePlan, plan_merge
from mol.merge.config import MergeConfiguration, load_merge_config
from mol.merge.methods import get_method

__all__ = [
    "MergeConfig",
    "MergedModel",
    "BaseMerge",
    "LinearMerge",
    "SlerpMerge",
    "TaskArithmeticMerge",
    "TiesMerge",
    "DareTiesMerge",
    "DareLinearMerge",
    "BreadcrumbsMerge",
    "BreadcrumbsTiesMerge",
    "ModelStockMerge",
    "NuSlerpMerge",
    "MultiSlerpMerge",
    "PassthroughMerge",
]


@dataclass
class MergeConfig:
    """A merge described in Python (the seed README's form).

    Args:
        method: merge method name (``linear``, ``slerp``, ``ties``, ...).
        models: model references (hub ids or local paths), in input order.
        base_model: the base, for methods that need one. ``slerp`` defaults to ``models[0]``.
        parameters: global parameter settings, as in YAML (scalars, gradients, filter lists).
            ``weights: [w0, w1, ...]`` is a shorthand for one ``weight`` per model; a method's
            required ``weight`` left unset is 1.0 for every model (an even mix; mergekit YAML
            has no such default).
        model_parameters: per-model settings, ``{model: {name: value}}``.
        output_path: where ``save_merged_model`` writes.
        dtype / out_dtype / tokenizer_source: as in mergekit YAML.
        device, trust_remote_code, allow_pickle, overwrite: how to run.
    """

    method: str
    models: list[str]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    model_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_path: str | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    device: str = "cpu"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    overwrite: bool = False

    def to_configuration(self) -> MergeConfiguration:
        """The equivalent mergekit-style configuration (validated)."""
        params = dict(self.parameters)
        per_model = {m: dict(self.model_parameters.get(m, {})) for m in self.models}
        unknown = set(self.model_parameters) - set(self.models)
        if unknown:
            raise ConfigError(f"model_parameters names models not in models: {sorted(unknown)}")
        weights = params.pop("weights", None)
        if weights is not None:
            if len(weights) != len(self.models):
                raise ConfigError(
                    f"weights has {len(weights)} values for {len(self.models)} models"
                )
            for model, w in zip(self.models, weights, strict=True):
                per_model[model].setdefault("weight", w)
        base = self.base_model
        if base is None and self.method == "slerp":
            base = self.models[0]
        weight_spec = next((p for p in get_method(self.method).params if p.name == "weight"), None)
        if weight_spec is not None and weight_spec.required and "weight" not in params:
            for model in self.models:  # the seed API's default: every model weighs the same
                if weight_spec.scope == "per_input" or model != base:
                    per_model[model].setdefault("weight", 1.0)
        raw: dict[str, Any] = {
            "merge_method": self.method,
            "models": [
                {"model": m, **({"parameters": per_model[m]} if per_model[m] else {})}
                for m in self.models
            ],
        }
        for key, value in (
            ("base_model", base),
            ("dtype", self.dtype),
            ("out_dtype", self.out_dtype),
            ("tokenizer_source", self.tokenizer_source),
        ):
            if value is not None:
                raw[key] = value
        if params:
            raw["parameters"] = params
        return load_merge_config(raw)

    def to_options(self) -> MergeOptions:
        """How to run it."""
        return MergeOptions(
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            allow_pickle=self.allow_pickle,
            overwrite=self.overwrite,
        )


@dataclass
class MergedModel:
    """A merge's output tensors in memory, with the plan that made them."""

    state_dict: dict[str, torch.Tensor]
    plan: MergePlan

    def to_hf_model(self) -> torch.nn.Module:
        """An ordinary transformers model with these weights (strict load)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.plan.models[self.plan.config_source])
        config.num_hidden_layers = self.plan.num_layers
        model = AutoModelForCausalLM.from_config(config)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        tied = (
            {k for k in missing if k.endswith("lm_head.weight")}
            if getattr(config, "tie_word_embeddings", False)
            else set()
        )
        if set(missing) - tied or unexpected:
            raise ConfigError(
                f"merged weights do not fit {type(model).__name__}: missing "
                f"{sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}"
            )
        model.tie_weights()
        return model.eval()


class BaseMerge:
    """Run one merge method through the seed API (subclasses fix the method)."""

    method: ClassVar[str]

    def __init__(self, config: MergeConfig):
        if config.method != self.method:
            raise ConfigError(
                f"{type(self).__name__} runs method {self.method!r}, but the "
                f"config says method={config.method!r}"
            )
        self.config = config
        self._configuration = config.to_configuration()
        self._plan: MergePlan | None = None

    def load_models(self) -> dict[str, LazyCheckpoint]:
        """Check the models and return lazy handles to their weights (nothing is read yet)."""
        if self._plan is None:
            self._plan = plan_merge(self._configuration, self.config.to_options())
        return self._plan.checkpoints

    def merge(self, models: dict[str, LazyCheckpoint] | None = None) -> MergedModel:
        """Compute every output tensor in memory."""
        if models is None or self._plan is None:
            self.load_models()
        return MergedModel(merge_in_memory(self._plan, self.config.device), self._plan)

    def save_merged_model(self, merged: MergedModel, output_path: str | None = None) -> Path:
        """Write ``merged`` as a transformers model directory (atomically)."""
        path = output_path or self.config.output_path
        if path is None:
            raise ConfigError("no output_path: set MergeConfig.output_path or pass one")
        tensors = (merged.state_dict[t.name] for t in merged.plan.tasks)
        return write_merge(merged.plan, tensors, path, overwrite=self.config.overwrite)


def _method_class(name: str, method: str, doc: str) -> type[BaseMerge]:
    return type(name, (BaseMerge,), {"method": method, "__doc__": doc, "__module__": __name__})


LinearMerge = _method_class("LinearMerge", "linear", "Weighted average (model soups).")
SlerpMerge = _method_class("SlerpMerge", "slerp", "Spherical interpolation of two models.")
TaskArithmeticMerge = _method_class(
    "TaskArithmeticMerge", "task_arithmetic", "Base plus weighted task vectors."
)
TiesMerge = _method_class("TiesMerge", "ties", "TIES: trim, elect sign, disjoint merge.")
DareTiesMerge = _method_class("DareTiesMerge", "dare_ties", "DARE drop-and-rescale with TIES.")
DareLinearMerge = _method_class("DareLinearMerge", "dare_linear", "DARE with a linear sum.")
BreadcrumbsMerge = _method_class("BreadcrumbsMerge", "breadcrumbs", "Model Breadcrumbs.")
BreadcrumbsTiesMerge = _method_class(
    "BreadcrumbsTiesMerge", "breadcrumbs_ties", "Model Breadcrumbs with TIES sign election."
)
ModelStockMerge = _method_class("ModelStockMerge", "model_stock", "Model Stock.")
NuSlerpMerge = _method_class("NuSlerpMerge", "nuslerp", "NuSLERP.")
MultiSlerpMerge = _method_class("MultiSlerpMerge", "multislerp", "Multi-model SLERP.")
PassthroughMerge = _method_class(
    "PassthroughMerge", "passthrough", "Copy tensors (frankenmerges via slices)."
)

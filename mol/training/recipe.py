"""``mol train CONFIG.yaml``: a runtime spec, a training spec and data in one file.

.. code-block:: yaml

    runtime:                      # MoLConfig fields, plus the layers
      models: [path/primary, path/partner]
      router_type: simple
      layers: aligned             # or a list: [[[0, 0], [1, 0]], [[0, 1], [1, 1]], ...]
    training:                     # TrainingConfig fields
      learning_rate: 1.0e-3
      max_steps: 100
      output_dir: ./fused
    data:
      train: zoo:demo/mixed       # a file, a directory of .txt, a zoo:<size>/<domain> name, or a list
      eval: zoo:demo/mixed@held_out

``layers: aligned`` fuses layer ``i`` of every model for ``i`` below the smallest depth; an
explicit list gives ``[model, layer]`` pairs per fused layer, the model as its index in
``models`` or its reference.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mol._config import check_keys, read_yaml, within
from mol._errors import ConfigError
from mol.fusion import MoLConfig, MoLRuntime
from mol.training.config import TrainingConfig

__all__ = ["Recipe", "load_recipe", "build_runtime"]


@dataclass
class Recipe:
    """A parsed ``mol train`` file."""

    runtime: MoLConfig
    layers: str | list[list[tuple[str, int]]]
    training: TrainingConfig
    train_data: Any
    eval_data: Any = None


def load_recipe(source: str | os.PathLike | Mapping[str, Any]) -> Recipe:
    """Parse and validate a recipe (unknown keys at any level are errors naming the key)."""
    raw = check_keys(
        read_yaml(source, "runtime: ..., training: ..., data: ..."),
        ("runtime", "training", "data"),
        "",
    )
    for key in ("runtime", "data"):
        if key not in raw:
            raise ConfigError(f"{key}: required")
    runtime_keys = [f.name for f in dataclasses.fields(MoLConfig) if f.name != "extra"] + ["layers"]
    spec = dict(check_keys(raw["runtime"], runtime_keys, "runtime"))
    layers = spec.pop("layers", "aligned")
    config = within("runtime", lambda: MoLConfig(**spec))
    data = check_keys(raw["data"], ("train", "eval"), "data")
    if "train" not in data:
        raise ConfigError("data.train: required")
    training = TrainingConfig.from_dict(raw.get("training") or {})
    return Recipe(config, _layers(layers, config.models), training, data["train"], data.get("eval"))


def _layers(raw: Any, models: list[str]):
    if raw == "aligned":
        return raw
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            f"runtime.layers: 'aligned' or a list of [[model, layer], ...], got {raw!r}"
        )
    out = []
    for i, experts in enumerate(raw):
        if not isinstance(experts, list) or not experts:
            raise ConfigError(
                f"runtime.layers[{i}]: a list of [model, layer] pairs, got {experts!r}"
            )
        pairs = []
        for j, pair in enumerate(experts):
            where = f"runtime.layers[{i}][{j}]"
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int)):
                raise ConfigError(f"{where}: expected [model, layer index], got {pair!r}")
            model = pair[0]
            if isinstance(model, int):
                if not 0 <= model < len(models):
                    raise ConfigError(
                        f"{where}: model index {model} out of range 0..{len(models) - 1}"
                    )
                model = models[model]
            elif model not in models:
                raise ConfigError(f"{where}: {model!r} is not in runtime.models")
            pairs.append((model, pair[1]))
        out.append(pairs)
    return out


def build_runtime(recipe: Recipe) -> MoLRuntime:
    """The runtime the recipe describes, set up and with its layers added."""
    runtime = MoLRuntime(recipe.runtime)
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    layers = recipe.layers
    if layers == "aligned":
        depth = min(runtime.infos[m].num_layers for m in recipe.runtime.models)
        layers = [[(m, i) for m in recipe.runtime.models] for i in range(depth)]
    for i, experts in enumerate(layers):
        runtime.add_layer(experts, layer_idx=i)
    return runtime

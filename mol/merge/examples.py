"""``mol-merge examples DIR``: one runnable YAML per merge method, on the zoo's models."""

from __future__ import annotations

from pathlib import Path

import yaml

from mol.merge.config import load_merge_config
from mol.merge.methods import list_methods

__all__ = ["example_configs", "write_examples"]


def example_configs(base: str, code: str, prose: str, layers: int) -> dict[str, dict]:
    """Example configurations (mergekit YAML as dicts) for every registered method.

    ``base`` is the common base model; ``code`` and ``prose`` are two fine-tunes of it, all
    with ``layers`` decoder layers (at least 2).
    """
    half = layers // 2

    def two(**p):
        return [
            {"model": code, "parameters": dict(p)},
            {"model": prose, "parameters": dict(p)},
        ]

    examples = {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": code, "parameters": {"weight": 0.5}},
                {"model": prose, "parameters": {"weight": 0.5}},
            ],
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": code,
            "slices": [
                {
                    "sources": [
                        {"model": code, "layer_range": [0, layers]},
                        {"model": prose, "layer_range": [0, layers]},
                    ]
                }
            ],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"value": 0.5},
                ]
            },
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": two(weight=1.0),
            "parameters": {"lambda": 0.8},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": two(weight=1.0, density=0.5),
            "parameters": {"normalize": True},
        },
        "dare_ties": {
            "merge_method": "dare_ties",
            "base_model": base,
            "models": two(weight=1.0, density=0.6),
        },
        "dare_linear": {
            "merge_method": "dare_linear",
            "base_model": base,
            "models": two(weight=0.5, density=0.6),
        },
        "breadcrumbs": {
            "merge_method": "breadcrumbs",
            "base_model": base,
            "models": two(weight=1.0, density=0.8, gamma=0.01),
        },
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties",
            "base_model": base,
            "models": two(weight=1.0, density=0.8, gamma=0.01),
        },
        "della": {
            "merge_method": "della",
            "base_model": base,
            "models": two(weight=1.0, density=0.6, epsilon=0.1),
        },
        "della_linear": {
            "merge_method": "della_linear",
            "base_model": base,
            "models": two(weight=0.5, density=0.6, epsilon=0.1),
        },
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": code}, {"model": prose}],
        },
        "nuslerp": {"merge_method": "nuslerp", "base_model": base, "models": two(weight=0.5)},
        "multislerp": {"merge_method": "multislerp", "base_model": base, "models": two(weight=0.5)},
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": code, "layer_range": [0, half]}]},
                {"sources": [{"model": prose, "layer_range": [half, layers]}]},
            ],
        },
    }
    missing = {m.name for m in list_methods()} - set(examples)
    if missing:
        raise RuntimeError(f"no example for merge methods {sorted(missing)}")
    return examples


def write_examples(directory: str | Path, *, size: str = "demo") -> list[Path]:
    """Build (or reuse) the zoo of ``size`` and write ``<method>_example.yml`` files."""
    from mol.zoo import build_zoo

    zoo = build_zoo(size)
    configs = example_configs(
        str(zoo.path("base")),
        str(zoo.path("expert-code")),
        str(zoo.path("expert-prose")),
        zoo.spec.models[0].layers,
    )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, raw in configs.items():
        load_merge_config(raw)  # every example must be valid
        path = out / f"{name}_example.yml"
        path.write_text(
            f"# {name}: merges the Mango zoo's code and prose experts ({size} size).\n"
            + yaml.safe_dump(raw, sort_keys=False)
        )
        paths.append(path)
    return paths

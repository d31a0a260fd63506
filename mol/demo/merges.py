"""The demo's merges: the two zoo experts combined four ways by the ``mol-merge`` engine."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mol.demo.table import DemoRow
from mol.eval.perplexity import perplexity
from mol.zoo import DOMAINS, Zoo

__all__ = ["demo_merges", "merge_rows"]


def demo_merges(zoo: Zoo) -> dict[str, dict]:
    """The merges the demo makes of the zoo's two experts (mergekit YAML as dicts)."""
    base, code, prose = (str(zoo.path(n)) for n in ("base", "expert-code", "expert-prose"))
    return {
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
            "parameters": {"t": 0.5},
            "models": [{"model": code}, {"model": prose}],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": code, "parameters": {"weight": 1.0}},
                {"model": prose, "parameters": {"weight": 1.0}},
            ],
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": code, "parameters": {"weight": 1.0, "density": 0.5}},
                {"model": prose, "parameters": {"weight": 1.0, "density": 0.5}},
            ],
        },
    }


def merge_rows(zoo: Zoo, out: Path, blocks: dict[str, torch.Tensor]) -> list[DemoRow]:
    """Run every demo merge into ``out/merges/<method>``, reload it, measure it."""
    from mol.merge import MergeOptions, load_merge_config, run_merge

    rows = []
    for method, raw in demo_merges(zoo).items():
        path = out / "merges" / method
        run_merge(load_merge_config(raw), path, MergeOptions(overwrite=True))
        model = AutoModelForCausalLM.from_pretrained(path)
        ppl = {d: perplexity(model, blocks[d], desc=f"merge-{method} on {d}") for d in DOMAINS}
        rows.append(DemoRow(f"merge-{method}", "merge", ppl))
    return rows

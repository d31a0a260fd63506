"""The main job: build (or reuse) the zoo, merge its experts, report held-out perplexity.

Rows: the zoo's models (reloaded from disk), then merges of the two experts made with the
real ``mol-merge`` pipeline (written to ``out/merges/<name>`` and reloaded). Later engines
(fusion, MoE) add their rows here; the CLI's ``mol demo`` only prints and saves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM

from mol.eval.perplexity import perplexity
from mol.zoo import DOMAINS, Zoo, build_zoo

__all__ = ["DemoRow", "run_demo", "format_table"]

_KINDS = {"base": "base", "expert-code": "expert", "expert-prose": "expert", "gpt2-code": "expert"}


@dataclass
class DemoRow:
    """One line of the demo table: a model, its kind, its held-out perplexity per domain."""

    name: str
    kind: str
    ppl: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"name", "kind", "ppl": {domain: float}}`` (the ``results.json`` row format)."""
        return {"name": self.name, "kind": self.kind, "ppl": dict(self.ppl)}


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


def run_demo(size: str = "demo", out: str | Path = "mol-demo") -> tuple[Zoo, list[DemoRow]]:
    """Build or reuse the zoo, merge its experts, measure every model's held-out perplexity.

    Zoo models are reloaded from disk, and each value must match the manifest's build-time
    figure (same weights, same text). Merges are written to ``out/merges/<method>`` by the
    streaming merge engine and loaded back with stock transformers. The table is saved as
    ``out/results.json`` (``{"rows": [{"name", "kind", "ppl": {domain: float}}]}``) and
    ``out/results.md``.

    Raises:
        RuntimeError: a reloaded zoo model's perplexity differs from the build-time figure.
    """
    from mol.merge import MergeOptions, load_merge_config, run_merge

    zoo = build_zoo(size)
    out = Path(out)
    blocks = {d: zoo.held_out_blocks(d) for d in DOMAINS}
    rows = []
    for name in zoo.model_names:
        model = AutoModelForCausalLM.from_pretrained(zoo.path(name))
        row = DemoRow(name, _KINDS.get(name, "expert"))
        for domain in DOMAINS:
            row.ppl[domain] = perplexity(model, blocks[domain], desc=f"{name} on {domain}")
            expected = zoo.perplexity(name, domain)
            if abs(row.ppl[domain] - expected) > 1e-3 * expected:
                raise RuntimeError(
                    f"zoo model {name!r} reloaded from {zoo.path(name)} gives perplexity "
                    f"{row.ppl[domain]:.4f} on {domain}, but {expected:.4f} was measured at build"
                )
        rows.append(row)
    for method, raw in demo_merges(zoo).items():
        path = out / "merges" / method
        run_merge(load_merge_config(raw), path, MergeOptions(overwrite=True))
        model = AutoModelForCausalLM.from_pretrained(path)
        rows.append(
            DemoRow(
                f"merge-{method}",
                "merge",
                {d: perplexity(model, blocks[d], desc=f"merge-{method} on {d}") for d in DOMAINS},
            )
        )
    (out / "results.json").write_text(json.dumps({"rows": [r.to_dict() for r in rows]}, indent=2))
    (out / "results.md").write_text(format_table(rows) + "\n")
    return zoo, rows


def format_table(rows: list[DemoRow]) -> str:
    """A markdown table: one row per model, one column per domain, plus their mean."""
    header = ["model", "kind", *(f"{d} ppl" for d in DOMAINS), "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        values = [row.ppl[d] for d in DOMAINS]
        cells = [
            row.name,
            row.kind,
            *(f"{v:.2f}" for v in values),
            f"{sum(values) / len(values):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

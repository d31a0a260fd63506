"""The main job: build (or reuse) the zoo and report held-out perplexity for every model.

Later engines (merging, fusion, MoE) add their rows here; the CLI's ``mol demo`` only prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def run_demo(size: str = "demo") -> tuple[Zoo, list[DemoRow]]:
    """Build or reuse the zoo, reload every model from disk and measure held-out perplexity.

    Reloading checks that what the zoo saved is what it measured: each value must match the
    manifest's build-time figure (they are the same weights and the same text).

    Raises:
        RuntimeError: a reloaded model's perplexity differs from the build-time figure.
    """
    zoo = build_zoo(size)
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

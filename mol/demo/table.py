"""The demo's table: one row per model, held-out perplexity per domain (and routing for fusions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mol.zoo import DOMAINS

__all__ = ["DemoRow", "format_table"]


@dataclass
class DemoRow:
    """One line of the demo table.

    Attributes:
        name / kind: the model and what it is (``base``, ``expert``, ``merge``, ``fusion``,
            ``moe``).
        ppl: held-out perplexity per domain.
        routing: per domain, the fraction of tokens routed mostly to the domain's own expert
            (fusions and MoEs; empty otherwise).
        extra: other figures, listed under the table (e.g. the gate's ``gate_test_f1``).
    """

    name: str
    kind: str
    ppl: dict[str, float] = field(default_factory=dict)
    routing: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"name", "kind", "ppl": {domain: float}}`` plus ``"routing"`` when measured and
        any extra figures (e.g. ``gate_test_f1``)."""
        out = {"name": self.name, "kind": self.kind, "ppl": dict(self.ppl)}
        if self.routing:
            out["routing"] = dict(self.routing)
        return out | dict(self.extra)


def format_table(rows: list[DemoRow]) -> str:
    """A markdown table: perplexity per domain, their mean, and routing accuracy per domain."""
    header = ["model", "kind", *(f"{d} ppl" for d in DOMAINS), "mean"]
    header += [f"routing {d}" for d in DOMAINS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        values = [row.ppl[d] for d in DOMAINS]
        cells = [
            row.name,
            row.kind,
            *(f"{v:.2f}" for v in values),
            f"{sum(values) / len(values):.2f}",
            *(f"{row.routing[d]:.0%}" if d in row.routing else "-" for d in DOMAINS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{row.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.extra.items())
        for row in rows
        if row.extra
    ]
    return "\n".join(lines + ([""] + notes if notes else []))

"""The main job: build (or reuse) the zoo; merge, fuse and mix its experts; compare.

Rows: the zoo's models (reloaded from disk, each checked against its build-time figure), the
merges of the two experts (:mod:`mol.demo.merges`), the trained fusions
(:mod:`mol.demo.fusion`) and the mixtures of experts (:mod:`mol.demo.moe`). The CLI's ``mol demo`` only prints and saves what this returns.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from mol.demo.fusion import fusion_rows
from mol.demo.merges import merge_rows
from mol.demo.moe import moe_rows
from mol.demo.table import DemoRow, format_table
from mol.eval.perplexity import perplexity
from mol.zoo import DOMAINS, Zoo, build_zoo

__all__ = ["run_demo"]

_KINDS = {"base": "base", "expert-code": "expert", "expert-prose": "expert", "gpt2-code": "expert"}


def zoo_rows(zoo: Zoo, blocks: dict) -> list[DemoRow]:
    """Every zoo model reloaded from disk and measured.

    Raises:
        RuntimeError: a reloaded model's perplexity differs from the build-time figure.
    """
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
    return rows


def run_demo(size: str = "demo", out: str | Path = "mol-demo") -> tuple[Zoo, list[DemoRow]]:
    """Build or reuse the zoo; measure its models, the merges and the fusions on held-out text.

    Writes ``out/results.json`` (``{"rows": [{"name", "kind", "ppl": {domain: float}}]}``,
    fusion rows with ``"routing"`` too), ``out/results.md``, the merges under
    ``out/merges/<method>``, each fusion's routing report under ``out/fusion/<name>`` and the
    MoE models under ``out/moe/``.
    """
    zoo = build_zoo(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = {d: zoo.held_out_blocks(d) for d in DOMAINS}
    rows = zoo_rows(zoo, blocks) + merge_rows(zoo, out, blocks)
    rows += fusion_rows(zoo, out, blocks) + moe_rows(zoo, out, blocks)
    (out / "results.json").write_text(json.dumps({"rows": [r.to_dict() for r in rows]}, indent=2))
    (out / "results.md").write_text(format_table(rows) + "\n")
    return zoo, rows

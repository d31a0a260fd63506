"""The demo's mixtures of experts: the two zoo experts as one Mixtral, and the gated MoE.

* ``moe-mixtral``: ``mol-merge moe``'s engine assembles the base's attention and the two
  experts' feed-forward blocks into a Mixtral checkpoint (both experts per token, weighted by
  the gate); each layer's gate row for an expert is the base model's mean hidden state on a
  handful of prompts of its domain minus the other domain's (below), no training.
* ``moe-mixtral+gates``: the same model after a short gate-only training run with
  :class:`~mol.training.MoLTrainer` on the zoo's mixed training split (every other weight
  frozen). Cached under ``$MOL_CACHE/demo-moe/`` like the fusions.
* ``moe-gated``: the gating-network MoE (:mod:`mol.moe.gating`): a prompt classifier picks
  the experts' weights once per sequence.

Routing accuracy is the fraction of held-out tokens (sequences, for the gated MoE) whose top
expert is the domain's own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mol.demo.table import DemoRow
from mol.eval.perplexity import perplexity
from mol.zoo import DOMAINS, Zoo, cache_root

__all__ = ["GATE_PROMPTS", "moe_rows"]

_VERSION = 3  # bump to retrain cached demo gates
_OWN = {"code": 0, "prose": 1}

# The hidden-state gate prompts: what each expert should receive.
GATE_PROMPTS = {
    "code": (
        "def main():\n    parser = argparse.ArgumentParser()\n    args = parser.parse_args()\n",
        "import os\nimport sys\n\nclass Handler(object):\n    def __init__(self, name):\n",
        "    for key, value in sorted(items.items()):\n        if value is None:\n            continue\n",
        "        raise ValueError('expected %r, got %r' % (expected, result))\n",
        "    return [x for x in self._cache if x is not None]\n",
    ),
    "prose": (
        "The import statement is executed in two steps: find a module, then initialize it.",
        "An exception is raised when an error is detected during the execution of a program.",
        "The following sections describe the standard types that are built into the interpreter.",
        "A class definition defines a class object and binds it to a name in the local namespace.",
        "If the object is not found, the search continues in the enclosing scope, as described.",
    ),
}


@dataclass(frozen=True)
class GateTraining:
    """The demo's gate-only training run of the assembled Mixtral."""

    steps: int
    batch_size: int
    learning_rate: float = 1e-2

    def key(self, zoo: Zoo) -> str:
        doc = {"zoo": zoo.manifest["fingerprint"], "run": dataclasses.asdict(self), "v": _VERSION}
        doc["prompts"] = GATE_PROMPTS
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _gate_training(size: str) -> GateTraining:
    return {"demo": GateTraining(80, 16), "micro": GateTraining(3, 4)}[size]


def assemble(zoo: Zoo, out: Path) -> Path:
    """Write the hidden-gate Mixtral of the two experts to ``out`` (replacing it)."""
    from mol.moe.assembly import build_moe, load_moe_config

    config = load_moe_config(
        {
            "base_model": str(zoo.path("base")),
            "architecture": "mixtral",
            "gate_mode": "hidden",
            "hidden_pooling": "mean",
            "experts_per_token": 2,  # both, weighted by the gate: and the gate can learn
            "dtype": "float32",
            "experts": [
                {
                    "source_model": str(zoo.path(f"expert-{d}")),
                    "positive_prompts": list(GATE_PROMPTS[d]),
                    "negative_prompts": [p for o in DOMAINS if o != d for p in GATE_PROMPTS[o]],
                }
                for d in DOMAINS
            ],
        }
    )
    return build_moe(config, out, overwrite=True).path


@torch.no_grad()
def mixtral_routing(
    model, blocks: dict[str, torch.Tensor], batch_size: int = 16
) -> dict[str, float]:
    """Per domain: the fraction of token-layer decisions that pick the domain's own expert."""
    model.eval()
    out = {}
    for domain, data in blocks.items():
        hits = total = 0
        for start in range(0, len(data), batch_size):
            logits = model(input_ids=data[start : start + batch_size], output_router_logits=True)
            for layer in logits.router_logits:
                top = layer.argmax(dim=-1)
                hits += int((top == _OWN[domain]).sum())
                total += top.numel()
        out[domain] = hits / total
    return out


def trained_gates(zoo: Zoo, assembled: Path) -> Path:
    """The assembled Mixtral after gate-only training (cached)."""
    from mol.io import load_tokenizer
    from mol.training import MoLTrainer, TrainingConfig

    run = _gate_training(zoo.manifest["size"])
    where = cache_root() / "demo-moe" / zoo.manifest["size"] / f"mixtral-gates-{run.key(zoo)}"
    final = where / "final"
    if (final / "config.json").is_file():
        return final
    model = AutoModelForCausalLM.from_pretrained(assembled)
    config = TrainingConfig(
        learning_rate=run.learning_rate,
        batch_size=run.batch_size,
        block_size=zoo.spec.block_size,
        max_steps=run.steps,
        warmup_steps=max(1, run.steps // 10),
        trainable_parameters=["*.gate.weight"],
        output_dir=str(where),
        seed=0,
    )
    trainer = MoLTrainer(model, config, tokenizer=load_tokenizer(assembled))
    return trainer.train(f"zoo:{zoo.manifest['size']}/mixed").final_checkpoint


def moe_rows(zoo: Zoo, out: Path, blocks: dict[str, torch.Tensor]) -> list[DemoRow]:
    """The three MoE rows (see the module docstring)."""
    from mol.moe.gating.demo import gated_moe_demo

    rows = []
    assembled = assemble(zoo, out / "moe" / "mixtral")
    for name, path in (
        ("moe-mixtral", assembled),
        ("moe-mixtral+gates", trained_gates(zoo, assembled)),
    ):
        model = AutoModelForCausalLM.from_pretrained(path)
        ppl = {d: perplexity(model, blocks[d], desc=f"{name} on {d}") for d in DOMAINS}
        rows.append(DemoRow(name, "moe", ppl, mixtral_routing(model, blocks)))
    gated = gated_moe_demo(zoo, out / "moe" / "gated")
    rows.append(
        DemoRow(
            "moe-gated",
            "moe",
            gated["ppl"],
            gated.get("routing", {}),
            {"gate_test_f1": gated["gate_test_f1"]},
        )
    )
    return rows

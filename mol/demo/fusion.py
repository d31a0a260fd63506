"""The demo's fusions: zoo models fused layer by layer, routers and adapters trained briefly.

Two configurations:

* ``fusion-experts``: the code expert and the prose expert (same Llama architecture), every
  layer fused, a simple (causal pooled) router per layer;
* ``fusion-gpt2+prose``: the narrower GPT-2 code model (primary) with the Llama prose expert,
  bridged by adapters (96 <-> 128 wide on the demo zoo).

Each is trained with :class:`~mol.training.MoLTrainer` on the zoo's mixed training split for a
bounded number of steps. Trained checkpoints are cached under ``$MOL_CACHE/demo-fusion/``,
keyed by the zoo's fingerprint and the recipe, so a second ``mol demo`` only evaluates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mol.demo.table import DemoRow
from mol.eval.perplexity import perplexity
from mol.eval.report import write_routing_report
from mol.fusion import MoLConfig, MoLRuntime
from mol.training import MoLTrainer, TrainingConfig
from mol.zoo import DOMAINS, Zoo, cache_root

__all__ = ["FusionRecipe", "demo_fusions", "fusion_rows"]

logger = logging.getLogger("mol")
_VERSION = 1  # bump to retrain cached demo fusions


@dataclass(frozen=True)
class FusionRecipe:
    """One demo fusion: which zoo models, and how long and how to train it.

    ``own`` maps each domain to the index of its own expert within a fused layer.
    """

    name: str
    models: tuple[str, ...]
    own: tuple[tuple[str, int], ...]
    steps: int
    batch_size: int = 16
    learning_rate: float = 3e-4
    router_learning_rate: float = 1e-2
    load_balancing_coeff: float = 0.01
    router_type: str = "simple"

    def key(self, zoo: Zoo) -> str:
        """Cache key: the zoo's fingerprint, this recipe and the demo fusion version."""
        doc = {
            "zoo": zoo.manifest["fingerprint"],
            "recipe": dataclasses.asdict(self),
            "v": _VERSION,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def demo_fusions(size: str) -> list[FusionRecipe]:
    """The fusions the demo trains (fewer steps on the micro zoo, which only tests plumbing)."""
    steps = {"demo": 150, "micro": 4}[size]
    batch = {"demo": 16, "micro": 4}[size]
    own = (("code", 0), ("prose", 1))
    return [
        FusionRecipe("fusion-experts", ("expert-code", "expert-prose"), own, steps, batch),
        # the adapters between widths start far from useful: they get larger learning rates
        FusionRecipe(
            "fusion-gpt2+prose",
            ("gpt2-code", "expert-prose"),
            own,
            steps,
            batch,
            learning_rate=3e-3,
            router_learning_rate=3e-2,
        ),
    ]


def build(zoo: Zoo, recipe: FusionRecipe) -> MoLRuntime:
    """The untrained runtime: every layer of the shallower model fused with its counterpart."""
    models = [str(zoo.path(m)) for m in recipe.models]
    runtime = MoLRuntime(MoLConfig(models=models, router_type=recipe.router_type))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    depth = min(runtime.infos[m].num_layers for m in models)
    for i in range(depth):
        runtime.add_layer([(m, i) for m in models], layer_idx=i)
    return runtime


def trained(zoo: Zoo, recipe: FusionRecipe) -> MoLRuntime:
    """The recipe's trained runtime, from the cache or trained now (and cached)."""
    where = cache_root() / "demo-fusion" / zoo.manifest["size"] / f"{recipe.name}-{recipe.key(zoo)}"
    final = where / "final"
    if (final / "mol_config.json").is_file():
        return MoLRuntime.load_checkpoint(final)
    runtime = build(zoo, recipe)
    config = TrainingConfig(
        learning_rate=recipe.learning_rate,
        router_learning_rate=recipe.router_learning_rate,
        load_balancing_coeff=recipe.load_balancing_coeff,
        batch_size=recipe.batch_size,
        block_size=zoo.spec.block_size,
        max_steps=recipe.steps,
        warmup_steps=max(1, recipe.steps // 10),
        output_dir=str(where),
        seed=0,
    )
    logger.info("training %s for %d steps", recipe.name, recipe.steps)
    MoLTrainer(runtime, config).train(f"zoo:{zoo.manifest['size']}/mixed")
    return runtime.eval()


def fusion_rows(zoo: Zoo, out: Path, blocks: dict[str, torch.Tensor]) -> list[DemoRow]:
    """Train (or reuse) every demo fusion, measure it, write its routing report."""
    rows = []
    for recipe in demo_fusions(zoo.manifest["size"]):
        runtime = trained(zoo, recipe)
        ppl = {d: perplexity(runtime, blocks[d], desc=f"{recipe.name} on {d}") for d in DOMAINS}
        report = write_routing_report(
            runtime,
            zoo,
            out / "fusion" / recipe.name,
            dict(recipe.own),
            title=f"Token routing of {recipe.name}",
            extra={"fusion": recipe.name, "models": list(recipe.models)},
        )
        routing = {d: report.accuracy(d) for d in DOMAINS}
        rows.append(DemoRow(recipe.name, "fusion", ppl, routing))
    return rows

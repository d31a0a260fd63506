"""The gating-network MoE on the zoo: the demo table's gate F1 and MoE perplexities."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mol._progress import quiet as quiet_progress
from mol.eval.perplexity import perplexity
from mol.moe.gating.model import MoEModel
from mol.moe.gating.train import GateTrainConfig, train_gating_network

__all__ = ["DEMO_GATE_SETTINGS", "gated_moe_demo"]

# Features are the base model's token embeddings, mean-pooled (the seed's default): cheap, and
# code and prose use different tokens. A small network with a larger learning rate than the
# CLI default converges in a few seconds on the zoo's examples.
DEMO_GATE_SETTINGS = {
    "hidden_dims": (64,),
    "dropout": 0.1,
    "learning_rate": 1e-3,
    "batch_size": 32,
    "num_epochs": 15,
    "feature_layer": 0,
    "seed": 42,
}


def gated_moe_demo(zoo, out_dir: str | os.PathLike, *, quiet: bool = True) -> dict:
    """Train the gate on the zoo (code vs prose), build the MoE, save and reload it, and
    measure its held-out perplexity.

    The gate trains on the zoo's **training** text (one example per ~512 characters; the test
    split held out from training and selection). The MoE over ``expert-code`` and
    ``expert-prose`` is written to ``out_dir/moe`` and loaded back from there before it is
    measured; the gate goes to ``out_dir/gate``. Each held-out block is routed as its own
    prompt.

    Args:
        zoo: a built :class:`mol.zoo.Zoo`.
        out_dir: where ``gate/`` and ``moe/`` are written (replaced if present).
        quiet: silence progress bars.

    Returns:
        ``{"gate_test_f1": float, "ppl": {domain: float}, "routing": {domain: float}}``,
        routing being the fraction of held-out blocks whose top gate expert is their domain's.
    """
    out_dir = Path(out_dir)
    with quiet_progress(quiet):
        config = GateTrainConfig(
            base_model=str(zoo.path("base")),
            data=("code", "prose"),
            zoo_size=zoo.manifest["size"],
            **DEMO_GATE_SETTINGS,
        )
        info = train_gating_network(config, out_dir / "gate", overwrite=True)
        built = MoEModel(
            expert_paths=[zoo.path("expert-code"), zoo.path("expert-prose")],
            gating_model_path=out_dir / "gate",
        )
        built.save_pretrained(out_dir / "moe")
        del built
        model = MoEModel.from_pretrained(out_dir / "moe")
        blocks = {domain: zoo.held_out_blocks(domain) for domain in ("code", "prose")}
        ppl = {d: perplexity(model, b, desc=f"gated moe on {d}") for d, b in blocks.items()}
        with torch.no_grad():  # each held-out block is one prompt: is it sent to its expert?
            routing = {
                d: float((model.gate_probs_for(b).argmax(dim=-1) == own).float().mean())
                for own, (d, b) in enumerate(blocks.items())
            }
    return {"gate_test_f1": float(info["test"]["f1"]), "ppl": ppl, "routing": routing}

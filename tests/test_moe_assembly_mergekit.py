"""Differential check against mergekit-moe (skipped when mergekit is not installed).

mergekit 0.1.5 writes the fused transformers-5 module layout (``mlp.experts.gate_up_proj``),
which is our default ``layout: fused``, so the two outputs are compared directly. For the gate
modes without randomness (``cheap_embed``; ``hidden`` in mergekit runs the base in
bfloat16 and averages padding into its means, so it is not comparable bit for bit) both tools
must write the same tensors under the same names.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mol.moe.assembly import ExpertConfig, MoEConfig, build_moe

from .moe_assembly_fixtures import save_dense, save_tokenizer

pytest.importorskip("mergekit.moe")

PROMPTS = (["def x return y", "import list for x"], ["once upon a time", "the king and queen"])


def _mergekit_moe(base: str, experts: list[str], out, negative: bool) -> None:
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.options import MergeOptions
    from mergekit.scripts.moe import build

    config = MoEMergeConfig.model_validate(
        {
            "base_model": base,
            "gate_mode": "cheap_embed",
            "dtype": "float32",
            "experts_per_token": 2,
            "experts": [
                {
                    "source_model": e,
                    "positive_prompts": PROMPTS[i],
                    "negative_prompts": PROMPTS[1 - i][:1] if negative else None,
                }
                for i, e in enumerate(experts)
            ],
        }
    )
    build(config, str(out), MergeOptions(), device="cpu")


def _tensors(path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    assert tensors
    return tensors


def test_cheap_embed_matches_mergekit_tensor_by_tensor(tmp_path):
    negative = True  # with negative prompts: both sides of the cheap_embed difference
    # No BOS: mergekit prepends the BOS text itself; without one, both see the same ids.
    tok = save_tokenizer(tmp_path / "tok", bos=False)
    base = save_dense(tmp_path / "base", "llama", 0, tokenizer=tok)
    experts = [save_dense(tmp_path / f"e{i}", "llama", i, like=tmp_path / "base") for i in (1, 2)]
    _mergekit_moe(base, experts, tmp_path / "mergekit", negative)
    ours = MoEConfig(
        base_model=base,
        experts=tuple(
            ExpertConfig(
                e,
                positive_prompts=PROMPTS[i],
                negative_prompts=PROMPTS[1 - i][:1] if negative else (),
            )
            for i, e in enumerate(experts)
        ),
        gate_mode="cheap_embed",
        dtype="float32",
    )
    result = build_moe(ours, tmp_path / "mol")
    theirs, mine = _tensors(tmp_path / "mergekit"), _tensors(result.path)
    assert sorted(theirs) == sorted(mine)
    assert "model.layers.1.mlp.experts.gate_up_proj" in mine
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, atol=1e-6, rtol=1e-5, msg=name)

"""Gating-network MoE: oracle tests on tiny random Llamas (FFN-only fine-tunes of one base)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from mol._errors import ConfigError
from mol.moe.gating import GatingNetwork, MoEModel, save_gating_network
from mol.moe.gating.model import MixtureMLP, _Routing

from .merge_fixtures import llama_config

VOCAB = 96


def _ffn_finetune(base: Path, out: Path, seed: int, noise: float = 0.05) -> Path:
    """``base`` plus seeded noise on the feed-forward weights only."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp." in name:
                param.add_(noise * torch.randn_like(param))
    model.save_pretrained(out)
    return out


def _gate_file(path: Path, base: Path, layer: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = GatingNetwork(32, 2, (16,), 0.0)
    net.feature_std.fill_(0.005)  # random-init features are ~0.006 wide: scale them to ~1
    meta = {"feature": {"layer": layer, "max_length": 64, "base_model": str(base)}}
    save_gating_network(net, path, meta)
    return path


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gated-moe")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(root / "base")
    shutil.copytree(root / "base", root / "base-copy")
    out = {"root": root, "base": root / "base", "base-copy": root / "base-copy"}
    out["e1"] = _ffn_finetune(root / "base", root / "e1", 1)
    out["e2"] = _ffn_finetune(root / "base", root / "e2", 2)
    out["gate0"] = _gate_file(root / "gate0.safetensors", root / "base", layer=0, seed=1)
    out["gate2"] = _gate_file(root / "gate2.safetensors", root / "base", layer=2, seed=1)
    return out


def _ids(rows: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def test_mixture_mlp_is_the_weighted_sum_of_its_experts():
    torch.manual_seed(0)
    experts = [torch.nn.Linear(4, 4) for _ in range(3)]
    routing = _Routing("weighted_sum")
    mix = MixtureMLP(experts, routing)
    x = torch.randn(2, 5, 4)
    w = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]])
    routing.weights = w
    want = sum(w[:, e].view(2, 1, 1) * experts[e](x) for e in range(3))
    torch.testing.assert_close(mix(x), want)
    routing.mode = "select_one"  # argmax per row: expert 1 for row 0, expert 2 for row 1
    got = mix(x)
    torch.testing.assert_close(got[0], experts[1](x[:1])[0])
    torch.testing.assert_close(got[1], experts[2](x[1:])[0])
    routing.weights = None
    with pytest.raises(RuntimeError, match="MoEModel.forward"):
        mix(x)


@pytest.mark.parametrize("mode", ["weighted_sum", "select_one"])
def test_experts_identical_to_base_give_the_base_model(fam, mode):
    moe = MoEModel(
        expert_paths=[fam["base"], fam["base-copy"]],
        gating_model_path=fam["gate0"],
        routing_mode=mode,
    )
    ids = _ids()
    probs = moe.gate_probs_for(ids)
    assert probs.shape == (3, 2) and (probs.max(dim=1).values < 0.99).all()  # really mixing
    base = AutoModelForCausalLM.from_pretrained(fam["base"])
    torch.testing.assert_close(_logits(moe, ids), _logits(base, ids), atol=1e-5, rtol=1e-5)


def test_one_hot_gate_gives_each_expert_row_by_row(fam):
    moe = MoEModel(model1_path=fam["e1"], model2_path=fam["e2"], gating_model_path=fam["gate0"])
    e1 = AutoModelForCausalLM.from_pretrained(fam["e1"])
    e2 = AutoModelForCausalLM.from_pretrained(fam["e2"])
    ids = _ids(rows=2)
    one_zero = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(_logits(moe, ids, gate_probs=one_zero), _logits(e1, ids))
    per_row = _logits(moe, ids, gate_probs=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(per_row[0], _logits(e1, ids[:1])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_row[1], _logits(e2, ids[1:])[0], atol=1e-5, rtol=1e-5)
    # the experts really differ, so the oracle above can fail
    assert not torch.allclose(_logits(e1, ids), _logits(e2, ids), atol=1e-3)


def test_select_one_equals_weighted_sum_with_the_one_hot_gate(fam):
    moe = MoEModel(
        expert_paths=[fam["e1"], fam["e2"]],
        gating_model_path=fam["gate0"],
        routing_mode="select_one",
    )
    ids = _ids(rows=4, seed=3)
    probs = moe.gate_probs_for(ids)
    assert len(probs.argmax(dim=1).unique()) == 2, "want both experts chosen in one batch"
    selected = _logits(moe, ids)
    moe.routing_mode = "weighted_sum"
    one_hot = torch.nn.functional.one_hot(probs.argmax(dim=1), 2).float()
    torch.testing.assert_close(
        selected, _logits(moe, ids, gate_probs=one_hot), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(_logits(moe, ids), selected, atol=1e-4)  # soft gate differs
    with pytest.raises(ConfigError, match="routing_mode"):
        moe.routing_mode = "top_two"


def test_save_load_round_trip_after_the_sources_are_deleted(fam, tmp_path):
    src = tmp_path / "src"
    for name in ("base", "e1", "e2"):
        shutil.copytree(fam[name], src / name)
    gate = _gate_file(src / "gate.safetensors", src / "base", layer=2, seed=1)
    moe = MoEModel(expert_paths=[src / "e1", src / "e2"], gating_model_path=gate)
    ids = _ids(rows=3, seed=5)
    want_probs = moe.gate_probs_for(ids)
    want = _logits(moe, ids)
    moe.save_pretrained(tmp_path / "saved")
    del moe
    shutil.rmtree(src)

    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    loaded = MoEModel.from_pretrained(tmp_path / "saved")
    assert loaded.config.feature_layer == 2 and loaded.routing_mode == "weighted_sum"
    assert torch.equal(loaded.gate_probs_for(ids), want_probs)
    assert torch.equal(_logits(loaded, ids), want)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert isinstance(auto, MoEModel)
    assert torch.equal(_logits(auto, ids), want)
    assert MoEModel.from_pretrained(tmp_path / "saved", routing_mode="select_one").routing_mode == (
        "select_one"
    )


def test_generate_with_cache_equals_without(fam):
    moe = MoEModel(expert_paths=[fam["e1"], fam["e2"]], gating_model_path=fam["gate0"])
    prompt = _ids(rows=1, length=6, seed=7)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    cached = moe.generate(prompt, use_cache=True, **kwargs)
    uncached = moe.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 16)
    assert torch.equal(cached, uncached)
    # the gate is the prompt's for every step: same as passing it explicitly
    fixed = moe.generate(prompt, gate_probs=moe.gate_probs_for(prompt), **kwargs)
    assert torch.equal(cached, fixed)
    # a manual prefill stores the gate on the cache; the next step reuses it
    with torch.no_grad():
        pre = moe(input_ids=prompt, use_cache=True)
        nxt = cached[:, 6:7]
        step = moe(input_ids=nxt, past_key_values=pre.past_key_values, use_cache=True)
        full = moe(input_ids=cached[:, :7], gate_probs=moe.gate_probs_for(prompt))
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_bad_parts_are_refused(fam, tmp_path):
    with pytest.raises(ConfigError, match="2 classes but 3 experts"):
        MoEModel(expert_paths=[fam["e1"], fam["e2"], fam["base"]], gating_model_path=fam["gate0"])
    with pytest.raises(ConfigError, match="routing_mode"):
        MoEModel(
            expert_paths=[fam["e1"], fam["e2"]], gating_model_path=fam["gate0"], routing_mode="x"
        )
    with pytest.raises(ConfigError, match="model2_path"):
        MoEModel(model1_path=fam["e1"], gating_model_path=fam["gate0"])
    with pytest.raises(FileNotFoundError, match="no gating network"):
        MoEModel(expert_paths=[fam["e1"], fam["e2"]], gating_model_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved MoEModel"):
        MoEModel.from_pretrained(tmp_path)

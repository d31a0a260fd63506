"""The streaming sharded safetensors writer: what it writes, safetensors and transformers read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from mol.io import LazyCheckpoint, PlannedTensor, ShardedSafetensorsWriter


def _plan(tensors):
    return [PlannedTensor(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def test_round_trip_across_shards_and_dtypes(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(10, 3, generator=g),
        "b.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(2, 2, 2, generator=g).half(),
        "d.int": torch.arange(5),
        "e.empty": torch.zeros(0, 4),
        "f.scalar": torch.tensor(3.5),
    }
    writer = ShardedSafetensorsWriter(tmp_path, _plan(tensors), max_shard_bytes=64)
    for name, t in tensors.items():
        writer.write(name, t)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(writer.shard_names) > 2
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    with LazyCheckpoint(tmp_path) as ckpt:
        assert sorted(ckpt.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert ckpt.dtype(name) == t.dtype and torch.equal(ckpt.get_tensor(name), t)
    for shard in writer.shard_names:  # the reference reader agrees
        with safe_open(tmp_path / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                assert torch.equal(f.get_tensor(key), tensors[key])


def test_single_shard_is_model_safetensors_and_transformers_loads_it(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=50,
    )
    model = LlamaForCausalLM(cfg).eval()
    state = model.state_dict()
    writer = ShardedSafetensorsWriter(tmp_path, _plan(state), max_shard_bytes=1 << 30)
    for name, t in state.items():
        writer.write(name, t)
    writer.close()
    assert writer.shard_names == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    cfg.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_out_of_order_wrong_shape_and_missing_tensors_are_errors(tmp_path):
    plan = [PlannedTensor("x", (2,), torch.float32), PlannedTensor("y", (3,), torch.float32)]
    writer = ShardedSafetensorsWriter(tmp_path, plan, max_shard_bytes=1024)
    with pytest.raises(ValueError, match="expected tensor 'x' next, got 'y'"):
        writer.write("y", torch.zeros(3))
    with pytest.raises(ValueError, match=r"tensor 'x' is \(3,\) torch.float32, planned \(2,\)"):
        writer.write("x", torch.zeros(3))
    writer.write("x", torch.zeros(2))
    with pytest.raises(ValueError, match="1 planned tensors were not written"):
        writer.close()
    with pytest.raises(ValueError, match="names a tensor twice"):
        ShardedSafetensorsWriter(tmp_path, plan + plan[:1], max_shard_bytes=1024)

"""The merge engine end to end on tiny models: oracles, streaming, atomicity, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from mol._errors import ConfigError, UnsupportedArchitectureError
from mol.io import LazyCheckpoint
from mol.merge import MergeOptions, load_merge_config, plan_merge, run_merge

from .merge_fixtures import family, gpt2_config, llama_config, save_random


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    return family(tmp_path_factory.mktemp("llama"), llama_config(), n_experts=3)


@pytest.fixture(scope="module")
def gpt2s(tmp_path_factory):
    return family(tmp_path_factory.mktemp("gpt2"), gpt2_config(), n_experts=2)


def _weights(path) -> dict[str, torch.Tensor]:
    with LazyCheckpoint(path) as ckpt:
        return {k: ckpt.get_tensor(k) for k in ckpt.keys()}


def _merge(tmp_path, raw: dict, **options):
    out = tmp_path / "out"
    run_merge(load_merge_config(raw), out, MergeOptions(**options))
    return out


@pytest.mark.parametrize("fixture", ["llamas", "gpt2s"])
def test_linear_one_hot_weights_return_model_a(request, tmp_path, fixture):
    m = request.getfixturevalue(fixture)
    out = _merge(
        tmp_path,
        {
            "merge_method": "linear",
            "models": [
                {"model": m["e1"], "parameters": {"weight": 1.0}},
                {"model": m["e2"], "parameters": {"weight": 0.0}},
            ],
        },
    )
    a, merged = _weights(m["e1"]), _weights(out)
    assert merged.keys() == a.keys()
    for k in a:
        assert torch.equal(merged[k], a[k]), k
    # a normal HF directory: loads with stock transformers, same logits as model A
    ids = torch.tensor([[1, 5, 9, 2]])
    got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    want = AutoModelForCausalLM.from_pretrained(m["e1"])(ids).logits
    assert torch.equal(got, want)
    assert (out / "README.md").read_text().count("linear") >= 1
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == "linear"


def test_linear_average_is_the_mean(llamas, tmp_path):
    out = _merge(
        tmp_path,
        {
            "merge_method": "linear",
            "models": [
                {"model": llamas["e1"], "parameters": {"weight": 1}},
                {"model": llamas["e2"], "parameters": {"weight": 3}},
            ],
        },
    )
    a, b, merged = _weights(llamas["e1"]), _weights(llamas["e2"]), _weights(out)
    for k in a:
        torch.testing.assert_close(merged[k], (a[k] + 3 * b[k]) / 4, rtol=0, atol=1e-6)


def test_slerp_t0_is_base_and_t1_is_other(llamas, tmp_path):
    for t, expect in ((0.0, "e1"), (1.0, "e2")):
        out = _merge(
            tmp_path / str(t),
            {
                "merge_method": "slerp",
                "base_model": llamas["e1"],
                "models": [{"model": llamas["e1"]}, {"model": llamas["e2"]}],
                "parameters": {"t": t},
            },
        )
        want, got = _weights(llamas[expect]), _weights(out)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_ties_density_one_single_model_returns_it(llamas, tmp_path):
    out = _merge(
        tmp_path,
        {
            "merge_method": "ties",
            "base_model": llamas["base"],
            "models": [{"model": llamas["e1"], "parameters": {"weight": 1.0, "density": 1.0}}],
        },
    )
    want, got = _weights(llamas["e1"]), _weights(out)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_task_arithmetic_all_equal_to_base_returns_base(llamas, tmp_path):
    out = _merge(
        tmp_path,
        {
            "merge_method": "task_arithmetic",
            "base_model": llamas["base"],
            "models": [{"model": llamas["base"], "parameters": {"weight": 0.7}}],
            "parameters": {"lambda": 2.0},
        },
    )
    want, got = _weights(llamas["base"]), _weights(out)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_gradient_and_filter_parameters_reach_each_layer(llamas, tmp_path):
    # t goes 0 -> 1 over the 4 layers for attention, mlp fixed at 1.0, everything else 0.5
    out = _merge(
        tmp_path,
        {
            "merge_method": "slerp",
            "base_model": llamas["e1"],
            "slices": [
                {
                    "sources": [
                        {"model": llamas["e1"], "layer_range": [0, 4]},
                        {"model": llamas["e2"], "layer_range": [0, 4]},
                    ]
                }
            ],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 1]},
                    {"filter": "mlp", "value": 1.0},
                    {"value": 0.5},
                ]
            },
        },
    )
    a, b, got = _weights(llamas["e1"]), _weights(llamas["e2"]), _weights(out)
    torch.testing.assert_close(
        got["model.layers.0.self_attn.q_proj.weight"],
        a["model.layers.0.self_attn.q_proj.weight"],
        rtol=0,
        atol=1e-6,
    )
    torch.testing.assert_close(
        got["model.layers.3.self_attn.q_proj.weight"],
        b["model.layers.3.self_attn.q_proj.weight"],
        rtol=0,
        atol=1e-6,
    )
    torch.testing.assert_close(
        got["model.layers.1.mlp.up_proj.weight"],
        b["model.layers.1.mlp.up_proj.weight"],
        rtol=0,
        atol=1e-6,
    )
    mid = got["model.norm.weight"]  # not attention, not mlp: t = 0.5
    assert not torch.allclose(mid, a["model.norm.weight"]) and not torch.allclose(
        mid, b["model.norm.weight"]
    )


def test_passthrough_frankenmerge_stacks_layer_ranges(llamas, tmp_path):
    out = _merge(
        tmp_path,
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": llamas["e1"], "layer_range": [0, 3]}]},
                {"sources": [{"model": llamas["e2"], "layer_range": [1, 4]}]},
            ],
        },
    )
    a, b, got = _weights(llamas["e1"]), _weights(llamas["e2"]), _weights(out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    for i in range(3):
        assert torch.equal(
            got[f"model.layers.{i}.mlp.up_proj.weight"], a[f"model.layers.{i}.mlp.up_proj.weight"]
        )
        assert torch.equal(
            got[f"model.layers.{i + 3}.mlp.up_proj.weight"],
            b[f"model.layers.{i + 1}.mlp.up_proj.weight"],
        )
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 6


def test_streamed_shards_equal_the_in_memory_merge(llamas, tmp_path):
    from mol.merge import merge_in_memory

    raw = {
        "merge_method": "ties",
        "base_model": llamas["base"],
        "parameters": {"density": 0.5},
        "models": [
            {"model": llamas["e1"], "parameters": {"weight": 0.6}},
            {"model": llamas["e2"], "parameters": {"weight": 0.4}},
        ],
    }
    out = _merge(tmp_path, raw, out_shard_size=20_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    plan = plan_merge(load_merge_config(raw))
    expected = merge_in_memory(plan)
    plan.close()
    got = _weights(out)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    AutoModelForCausalLM.from_pretrained(out)


def test_out_dtype_and_bf16_inputs(tmp_path):
    m = family(
        tmp_path / "bf16", llama_config(num_hidden_layers=2), n_experts=2, dtype=torch.bfloat16
    )
    out = _merge(
        tmp_path,
        {
            "merge_method": "linear",
            "out_dtype": "float16",
            "models": [
                {"model": m["e1"], "parameters": {"weight": 1}},
                {"model": m["e2"], "parameters": {"weight": 1}},
            ],
        },
    )
    got, a, b = _weights(out), _weights(m["e1"]), _weights(m["e2"])
    k = "model.layers.0.mlp.up_proj.weight"
    assert got[k].dtype == torch.float16
    expect = ((a[k].float() + b[k].float()) / 2).half()
    assert torch.equal(got[k], expect)  # computed in float32, rounded once


def test_dare_is_reproducible_with_a_seed(llamas, tmp_path):
    raw = {
        "merge_method": "dare_ties",
        "base_model": llamas["base"],
        "parameters": {"density": 0.5},
        "models": [
            {"model": llamas["e1"], "parameters": {"weight": 1.0}},
            {"model": llamas["e2"], "parameters": {"weight": 1.0}},
        ],
    }
    a = _weights(_merge(tmp_path / "a", raw, random_seed=7))
    b = _weights(_merge(tmp_path / "b", raw, random_seed=7))
    c = _weights(_merge(tmp_path / "c", raw, random_seed=8))
    k = "model.layers.1.mlp.down_proj.weight"
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a[k], c[k])


def test_a_failure_midway_leaves_no_output(llamas, tmp_path, monkeypatch):
    import mol.merge._execute as execute

    real, calls = execute.compute_tensor, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed midway")
        return real(*args, **kwargs)

    monkeypatch.setattr(execute, "compute_tensor", flaky)
    with pytest.raises(KeyboardInterrupt):
        _merge(
            tmp_path,
            {
                "merge_method": "linear",
                "models": [
                    {"model": llamas["e1"], "parameters": {"weight": 1}},
                    {"model": llamas["e2"], "parameters": {"weight": 1}},
                ],
            },
        )
    assert len(calls) == 5
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary sibling


def test_problems_are_found_before_any_tensor_is_read(llamas, gpt2s, tmp_path, monkeypatch):
    def no_reads(self, name):
        raise AssertionError(f"tensor {name} read during validation")

    monkeypatch.setattr(LazyCheckpoint, "get_tensor", no_reads)
    other_vocab = str(save_random(tmp_path / "v", llama_config(vocab_size=100), 5))
    wider = str(save_random(tmp_path / "w", llama_config(intermediate_size=64), 6))
    cases = [
        (
            {
                "merge_method": "linear",
                "models": [
                    {"model": llamas["e1"], "parameters": {"weight": 1}},
                    {"model": gpt2s["e1"], "parameters": {"weight": 1}},
                ],
            },
            UnsupportedArchitectureError,
            "different architectures",
        ),
        (
            {
                "merge_method": "linear",
                "models": [
                    {"model": llamas["e1"], "parameters": {"weight": 1}},
                    {"model": other_vocab, "parameters": {"weight": 1}},
                ],
            },
            UnsupportedArchitectureError,
            r"model.embed_tokens.weight.*different shapes.*\[100, 32\]",
        ),
        (
            {
                "merge_method": "linear",
                "models": [
                    {"model": llamas["e1"], "parameters": {"weight": 1}},
                    {"model": wider, "parameters": {"weight": 1}},
                ],
            },
            UnsupportedArchitectureError,
            r"mlp.*different shapes",
        ),
        (
            {
                "merge_method": "passthrough",
                "slices": [{"sources": [{"model": llamas["e1"], "layer_range": [2, 9]}]}],
            },
            ConfigError,
            r"layer_range \[2, 9\].*outside its 4 layers",
        ),
        (
            {
                "merge_method": "linear",
                "models": [{"model": llamas["e1"] + "+adapter", "parameters": {"weight": 1}}],
            },
            ConfigError,
            r"LoRA references \(model\+lora\) are not supported",
        ),
        (
            {
                "merge_method": "linear",
                "models": [
                    {"model": str(tmp_path / "nope"), "parameters": {"weight": 1}},
                    {"model": llamas["e1"], "parameters": {"weight": 1}},
                ],
            },
            Exception,
            "nope",
        ),
    ]
    for raw, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            run_merge(load_merge_config(raw), tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(llamas, tmp_path):
    raw = {
        "merge_method": "linear",
        "models": [{"model": llamas["e1"], "parameters": {"weight": 1}}],
    }
    out = _merge(tmp_path, raw)
    with pytest.raises(FileExistsError, match="not empty"):
        run_merge(load_merge_config(raw), out)
    run_merge(load_merge_config(raw), out, MergeOptions(overwrite=True))
    assert (out / "model.safetensors").is_file()


def test_demo_linear_merge_matches_a_hand_average(micro_zoo, tmp_path):
    from mol.demo import demo_merges

    raw = demo_merges(micro_zoo)["linear"]
    out = _merge(tmp_path, raw)
    a, b = _weights(micro_zoo.path("expert-code")), _weights(micro_zoo.path("expert-prose"))
    got = _weights(out)
    for k in a:
        torch.testing.assert_close(got[k], (a[k] + b[k]) / 2, rtol=0, atol=1e-6)


def test_cuda_without_a_gpu_is_a_clear_error(llamas, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    raw = {
        "merge_method": "linear",
        "models": [{"model": llamas["e1"], "parameters": {"weight": 1}}],
    }
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_merge(load_merge_config(raw), tmp_path / "out", MergeOptions(device="cuda"))
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_merge_equals_cpu_merge(llamas, tmp_path):
    raw = {
        "merge_method": "ties",
        "base_model": llamas["base"],
        "parameters": {"density": 0.5},
        "models": [
            {"model": llamas["e1"], "parameters": {"weight": 0.6}},
            {"model": llamas["e2"], "parameters": {"weight": 0.4}},
        ],
    }
    cpu = _weights(_merge(tmp_path / "cpu", raw))
    gpu = _weights(_merge(tmp_path / "gpu", raw, device="cuda"))
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-5, atol=1e-6)

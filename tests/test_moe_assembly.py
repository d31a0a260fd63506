"""MoE assembly: dense experts -> Mixtral / Qwen2-MoE / Qwen3-MoE checkpoints, with oracles.

Oracles: identical experts reproduce the dense base exactly; one expert with top-1 reproduces
that expert; each exported expert computes its dense MLP; transformers loads the output with no
missing or unexpected keys and writes the same keys back; the ``fused`` layout is exactly the
target class's own state dict and the ``per_expert`` layout computes the same logits; hidden
gates match a direct computation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from mol._errors import CheckpointMismatchError, ConfigError, UnsupportedArchitectureError
from mol.cli.merge import cli
from mol.moe.assembly import (
    CausalLMPool,
    ExpertConfig,
    MixtralForCausalLMMergingAlgorithm,
    MixtralMoEMergingAlgorithm,
    MoEConfig,
    build_moe,
    count_parameters,
    load_moe_config,
    print_parameters,
)
from mol.moe.assembly.gates import hidden_gate_rows, normalise_rows
from mol.moe.assembly.layout import fuse_experts

from .moe_assembly_fixtures import WORDS, save_dense, save_tokenizer

TARGET = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}
PROMPTS = {
    "code": ["def x return y", "import list for x", "class self value print z while if"],
    "prose": ["once upon a time", "there was a king and a queen", "the forest river night"],
}
IDS = torch.tensor([[1, 5, 9, 13, 20, 30, 41, 7], [1, 33, 34, 35, 36, 12, 11, 2]])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Per family: a base, two MLP-only fine-tunes and one full fine-tune; plus a tokenizer."""
    root = tmp_path_factory.mktemp("moe-zoo")
    tok = save_tokenizer(root / "tokenizer")
    out = {"tokenizer": str(tok)}
    for i, family in enumerate(TARGET):
        base = save_dense(root / family / "base", family, 10 * i, tokenizer=tok)
        out[family] = {
            "base": base,
            "e1": save_dense(root / family / "e1", family, 10 * i + 1, like=Path(base)),
            "e2": save_dense(root / family / "e2", family, 10 * i + 2, like=Path(base)),
            "full": save_dense(
                root / family / "full", family, 10 * i + 3, like=Path(base), mlp_only=False
            ),
        }
    return out


def _logits(path, ids=IDS) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _config(base, experts, **kw) -> MoEConfig:
    prompts = [PROMPTS["code"], PROMPTS["prose"]]
    gate_mode = kw.get("gate_mode", "hidden")
    specs = tuple(
        ExpertConfig(
            e,
            positive_prompts=prompts[i % 2] if gate_mode in ("hidden", "cheap_embed") else (),
            negative_prompts=prompts[(i + 1) % 2][:1] if gate_mode == "hidden" else (),
        )
        for i, e in enumerate(experts)
    )
    # The zoo's word-level tokenizer (a Qwen2 directory would rebuild it as a BPE Qwen2Tokenizer).
    kw.setdefault("tokenizer", str(Path(base).parent.parent / "tokenizer"))
    return MoEConfig(base_model=base, experts=specs, **kw)


# --- oracles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(TARGET))
@pytest.mark.parametrize("gate_mode", ["hidden", "cheap_embed", "random", "uniform_random"])
def test_identical_experts_reproduce_the_dense_base(zoo, tmp_path, family, gate_mode):
    base = zoo[family]["base"]
    result = build_moe(
        _config(base, [base] * 3, gate_mode=gate_mode, experts_per_token=2), tmp_path / "moe"
    )
    assert result.architecture == TARGET[family]
    torch.testing.assert_close(_logits(result.path), _logits(base), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_identical_experts_any_top_k(zoo, tmp_path, k):
    base = zoo["qwen2"]["base"]
    result = build_moe(
        _config(base, [base] * 3, gate_mode="random", experts_per_token=k), tmp_path / "moe"
    )
    torch.testing.assert_close(_logits(result.path), _logits(base), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(TARGET))
def test_one_expert_top1_reproduces_that_expert(zoo, tmp_path, family):
    m = zoo[family]
    result = build_moe(_config(m["base"], [m["e1"]], experts_per_token=1), tmp_path / "moe")
    reference = _logits(m["e1"])
    torch.testing.assert_close(_logits(result.path), reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference, _logits(m["base"]), atol=1e-3)  # the test can fail
    # A full fine-tune (attention differs too) needs its shared parts: shared_parts=average.
    avg = build_moe(
        _config(m["base"], [m["full"]], experts_per_token=1, shared_parts="average"),
        tmp_path / "avg",
    )
    torch.testing.assert_close(_logits(avg.path), _logits(m["full"]), atol=1e-5, rtol=1e-5)


CLASS = {
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
# Layer 0's router and first expert tensor in the per_expert layout.
PER_EXPERT_NAMES = {
    "mixtral": (
        "model.layers.0.block_sparse_moe.gate.weight",
        "model.layers.0.block_sparse_moe.experts.0.w1.weight",
    ),
    "qwen2_moe": (
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.0.gate_proj.weight",
    ),
    "qwen3_moe": (
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.0.gate_proj.weight",
    ),
}


def _meta_state_dict_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The target class's own parameter names and shapes, for the config we wrote."""
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("family", list(TARGET))
def test_both_layouts_load_cleanly_generate_and_agree(zoo, tmp_path, family):
    m = zoo[family]
    arch = TARGET[family]
    logits = {}
    for layout in ("fused", "per_expert"):
        config = _config(m["base"], [m["e1"], m["e2"]], gate_mode="random", layout=layout)
        result = build_moe(config, tmp_path / layout)
        model, info = AutoModelForCausalLM.from_pretrained(
            result.path, dtype=torch.float32, output_loading_info=True
        )
        assert type(model).__name__ == CLASS[arch]
        assert not info["missing_keys"] and not info["unexpected_keys"], layout
        assert not info["mismatched_keys"], layout
        with torch.no_grad():
            logits[layout] = model(IDS).logits
        written = _shapes(result.path)
        if layout == "fused":
            # Exactly the class's own parameters: no conversion on load.
            assert written == _meta_state_dict_shapes(result.path)
            assert written["model.layers.0.mlp.experts.gate_up_proj"] == (2, 2 * 48, 32)
            assert written["model.layers.0.mlp.experts.down_proj"] == (2, 32, 48)
            assert written["model.layers.0.mlp.gate.weight"] == (2, 32)
            generated = model.generate(IDS[:1], max_new_tokens=5, do_sample=False)
            assert generated.shape == (1, IDS.shape[1] + 5)
        else:
            router, first = PER_EXPERT_NAMES[arch]
            assert written[router] == (2, 32) and written[first] == (48, 32)
            assert not [k for k in written if k.endswith(("gate_up_proj", "experts.down_proj"))]
        # transformers writes back exactly the keys and shapes we wrote, in either layout.
        model.save_pretrained(tmp_path / f"{layout}-resaved")
        assert _shapes(tmp_path / f"{layout}-resaved") == written
        assert json.loads((result.path / "mol_moe.json").read_text())["layout"] == layout
    # The same experts and gates, only stored differently: the same model.
    torch.testing.assert_close(logits["fused"], logits["per_expert"], atol=0.0, rtol=0.0)
    assert (result.path / "tokenizer.json").is_file()
    cfg = json.loads((result.path / "config.json").read_text())
    assert cfg["num_experts_per_tok"] == 2


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    assert shapes
    return shapes


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_each_expert_computes_its_dense_mlp(zoo, tmp_path, family):
    m = zoo[family]
    experts = [m["e1"], m["e2"]]
    result = build_moe(_config(m["base"], experts, gate_mode="random"), tmp_path / "moe")
    moe = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32)
    dense = [AutoModelForCausalLM.from_pretrained(e, dtype=torch.float32) for e in experts]
    x = torch.randn(7, 32)
    for layer in range(2):
        block = moe.model.layers[layer].mlp
        mlps = [
            {p: getattr(d.model.layers[layer].mlp, p).weight for p in ("gate_proj", "up_proj")}
            | {"down_proj": d.model.layers[layer].mlp.down_proj.weight}
            for d in dense
        ]
        gate_up, down = fuse_experts(mlps)
        torch.testing.assert_close(block.experts.gate_up_proj, gate_up)
        torch.testing.assert_close(block.experts.down_proj, down)
        for k, d in enumerate(dense):
            # Route every token to expert k alone, with weight 1.
            index = torch.full((7, 1), k)
            out = block.experts(x, index, torch.ones(7, 1))
            with torch.no_grad():
                torch.testing.assert_close(out, d.model.layers[layer].mlp(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_hidden_gate_rows_follow_the_definition(zoo, tmp_path, pooling):
    m = zoo["llama"]
    config = _config(m["base"], [m["e1"], m["e2"]], hidden_pooling=pooling, prompt_batch_size=2)
    result = build_moe(config, tmp_path / "moe")
    moe = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(m["base"], dtype=torch.float32)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo["tokenizer"])

    def pooled(prompt: str) -> torch.Tensor:  # one prompt at a time: no padding at all
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            states = base(ids, output_hidden_states=True).hidden_states[:2]
        return torch.stack([s[0, -1] if pooling == "last" else s[0].mean(0) for s in states])

    for e, expert in enumerate(config.experts):
        pos = torch.stack([pooled(p) for p in expert.positive_prompts]).mean(0)
        neg = torch.stack([pooled(p) for p in expert.negative_prompts]).mean(0)
        rows = (pos - neg) / (pos - neg).norm(dim=-1, keepdim=True)
        for layer in range(2):
            got = moe.model.layers[layer].mlp.gate.weight[e]
            torch.testing.assert_close(got, rows[layer], atol=1e-5, rtol=1e-4)


def test_hidden_gate_rows_pure():
    pos = torch.tensor([[[3.0, 0.0]], [[1.0, 0.0]]])  # (P=2, L=1, H=2)
    neg = torch.tensor([[[0.0, 2.0]]])
    torch.testing.assert_close(
        hidden_gate_rows(pos, neg), normalise_rows(torch.tensor([[2.0, -2.0]]))
    )
    torch.testing.assert_close(hidden_gate_rows(pos, None), torch.tensor([[1.0, 0.0]]))


def test_nearly_parallel_gates_warn(zoo, tmp_path, caplog):
    m = zoo["llama"]
    same = ExpertConfig(m["e1"], positive_prompts=PROMPTS["code"])
    config = MoEConfig(base_model=m["base"], experts=(same, same), gate_mode="cheap_embed")
    with caplog.at_level(logging.WARNING, logger="mol"):
        result = build_moe(config, tmp_path / "moe")
    assert result.parallel_pairs and "nearly parallel" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mol"):
        result = build_moe(_config(m["base"], [m["e1"], m["e2"]]), tmp_path / "ok")
    assert not result.parallel_pairs and "nearly parallel" not in caplog.text


# --- API and CLI -------------------------------------------------------------------------------


def test_seed_api_runs_saves_and_counts_parameters(zoo, tmp_path, capsys):
    m = zoo["llama"]
    pool = CausalLMPool(
        models={
            "_pretrained_": m["base"],
            "expert_1": m["e1"],
            "expert_2": m["e2"],
            "expert_3": m["base"],
        },
        tokenizer=m["base"],
        model_kwargs={"torch_dtype": "bfloat16"},
    )
    algorithm = MixtralForCausalLMMergingAlgorithm(
        experts_per_token=2, save_checkpoint=tmp_path / "saved"
    )
    model = algorithm.run(pool)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert model.dtype == torch.bfloat16
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reloaded(IDS).logits)
    counts = print_parameters(model)
    assert "active per token" in capsys.readouterr().out
    dense = AutoModelForCausalLM.from_pretrained(m["base"])
    mlp = sum(p.numel() for n, p in dense.named_parameters() if ".mlp." in n)
    routers = 2 * 3 * 32  # layers x experts x hidden
    assert counts.total == sum(p.numel() for p in dense.parameters()) + 2 * mlp + routers
    assert counts.active == sum(p.numel() for p in dense.parameters()) + mlp + routers
    assert count_parameters(dense).active == count_parameters(dense).total
    # The default layout is the class's own; layout= selects the per-expert one.
    assert "model.layers.0.mlp.experts.gate_up_proj" in _shapes(tmp_path / "saved")
    backbone = MixtralMoEMergingAlgorithm(
        experts_per_token=1, layout="per_expert", save_checkpoint=tmp_path / "per_expert"
    ).run(pool)
    assert type(backbone).__name__ == "MixtralModel"
    assert "model.layers.0.block_sparse_moe.experts.2.w3.weight" in _shapes(tmp_path / "per_expert")


def test_api_rejects_prompts_for_unknown_expert(zoo):
    m = zoo["llama"]
    pool = CausalLMPool(models={"_pretrained_": m["base"], "expert_1": m["e1"]})
    algorithm = MixtralForCausalLMMergingAlgorithm(
        experts_per_token=1, gate_mode="hidden", positive_prompts={"expert1": ["x"]}
    )
    with pytest.raises(ConfigError, match="did you mean 'expert_1'"):
        algorithm.run(pool)
    with pytest.raises(ConfigError, match="_pretrained_"):
        CausalLMPool(models={"expert_1": m["e1"]})


def _yaml(tmp_path, data) -> Path:
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_assembles_and_fails_cleanly(zoo, tmp_path):
    m = zoo["qwen3"]
    data = {
        "base_model": m["base"],
        "architecture": "qwen3_moe",
        "gate_mode": "hidden",
        "experts_per_token": 1,
        "dtype": "float32",
        "layout": "per_expert",
        "experts": [
            {"source_model": m["e1"], "positive_prompts": PROMPTS["code"]},
            {
                "source_model": m["e2"],
                "positive_prompts": PROMPTS["prose"],
                "negative_prompts": PROMPTS["code"][:1],
            },
        ],
    }
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(cli, ["moe", str(_yaml(tmp_path, data)), str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "qwen3_moe MoE with 2 experts" in res.output
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert "model.layers.1.mlp.experts.1.down_proj.weight" in _shapes(out)  # layout: per_expert
    # Existing output without --overwrite: refused, untouched.
    before = sorted(p.name for p in out.iterdir())
    res = runner.invoke(cli, ["moe", str(_yaml(tmp_path, data)), str(out), "-q"])
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert sorted(p.name for p in out.iterdir()) == before
    # A typo: exit 1, the key named, nothing written.
    data["experts_per_tokn"] = data.pop("experts_per_token")
    res = runner.invoke(cli, ["moe", str(_yaml(tmp_path, data)), str(tmp_path / "typo"), "-q"])
    assert res.exit_code == 1
    assert "experts_per_tokn" in res.output and "did you mean 'experts_per_token'" in res.output
    assert not (tmp_path / "typo").exists()


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (
            {"experts_per_tokn": 2},
            r"experts_per_tokn: unknown key \(did you mean 'experts_per_token'",
        ),
        ({"gate_mode": "hiden"}, "gate_mode: 'hiden' is not one of .*did you mean 'hidden'"),
        ({"architecture": "mixtrall"}, "architecture: .*did you mean 'mixtral'"),
        ({"dtype": "fp8"}, "dtype: 'fp8'"),
        (
            {"layout": "fussed"},
            "layout: 'fussed' is not one of fused, per_expert .*did you mean 'fused'",
        ),
        ({"layout": 2}, "layout: 2 is not one of fused, per_expert"),
        ({"experts_per_token": 3}, "experts_per_token: 3 is more than the 2 experts"),
        ({"experts_per_token": 0}, "experts_per_token: expected a positive integer"),
        ({"experts": []}, "experts: at least one expert"),
    ],
)
def test_config_errors_name_the_key(mutate, where):
    data = {
        "base_model": "b",
        "gate_mode": "random",
        "experts": [{"source_model": "e1"}, {"source_model": "e2"}],
    }
    data.update(mutate)
    with pytest.raises(ConfigError, match=where):
        load_moe_config(yaml.safe_dump(data))


def test_expert_key_typos_and_missing_prompts():
    with pytest.raises(
        ConfigError, match=r"experts\[1\]\.positive_prompt: unknown key .*'positive_prompts'"
    ):
        load_moe_config(
            {
                "base_model": "b",
                "experts": [
                    {"source_model": "a", "positive_prompts": ["x"]},
                    {"source_model": "c", "positive_prompt": ["y"]},
                ],
            }
        )
    with pytest.raises(ConfigError, match=r"experts\[0\]\.positive_prompts: gate_mode 'hidden'"):
        load_moe_config({"base_model": "b", "experts": [{"source_model": "a"}] * 2})
    with pytest.raises(ConfigError, match="source_model: required"):
        load_moe_config({"base_model": "b", "experts": [{"positive_prompts": ["x"]}]})


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("other_family", UnsupportedArchitectureError, "all experts must share the base's"),
        ("other_shape", CheckpointMismatchError, "intermediate_size=64 but the base .* has 48"),
        ("wrong_target", UnsupportedArchitectureError, "'qwen2_moe' takes experts of the qwen2"),
        ("bias", UnsupportedArchitectureError, "attention_bias=True; Mixtral has no biases"),
        ("missing", Exception, "does-not-exist"),
    ],
)
def test_bad_inputs_fail_before_writing(zoo, tmp_path, case, error, match):
    m = zoo["llama"]
    experts, kw = [m["e1"], m["e2"]], {"gate_mode": "random"}
    base = m["base"]
    if case == "other_family":
        experts = [m["e1"], zoo["mistral"]["e1"]]
    elif case == "other_shape":
        experts = [m["e1"], save_dense(tmp_path / "wide", "llama", 5, intermediate_size=64)]
    elif case == "wrong_target":
        kw["architecture"] = "qwen2_moe"
    elif case == "bias":
        base = save_dense(tmp_path / "biased", "llama", 6, attention_bias=True)
        experts = [base, base]
    elif case == "missing":
        experts = [m["e1"], str(tmp_path / "does-not-exist")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(error, match=match):
        build_moe(_config(base, experts, **kw), out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_words_fit_the_vocab():
    assert len(set(WORDS)) + 4 <= 64


# --- the micro zoo (real trained models) -------------------------------------------------------


@pytest.mark.slow
def test_micro_zoo_hidden_gate_moe(micro_zoo, tmp_path):
    config = MoEConfig(
        base_model=str(micro_zoo.path("base")),
        experts=(
            ExpertConfig(
                str(micro_zoo.path("expert-code")),
                positive_prompts=("def main():\n    return 0", "import os\nfor x in y:"),
            ),
            ExpertConfig(
                str(micro_zoo.path("expert-prose")),
                positive_prompts=("It was a bright cold day in April.", "She said that"),
            ),
        ),
        tokenizer=str(micro_zoo.tokenizer_path),
        experts_per_token=1,
    )
    result = build_moe(config, tmp_path / "moe")
    model, info = AutoModelForCausalLM.from_pretrained(result.path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4).shape == (1, 7)
    # One expert only, top-1: exactly the dense code expert (it differs from base in MLPs only).
    single = MoEConfig(
        base_model=config.base_model,
        experts=config.experts[:1],
        gate_mode="random",
        experts_per_token=1,
    )
    one = build_moe(single, tmp_path / "one")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(
        _logits(one.path, ids), _logits(micro_zoo.path("expert-code"), ids), atol=1e-5, rtol=1e-5
    )

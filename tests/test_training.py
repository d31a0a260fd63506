"""MoLTrainer: gradients reach what trains, frozen parts stay bit-identical, loss goes down,
resuming equals not stopping, and the knobs (accumulation, checkpointing) change nothing else."""

from __future__ import annotations

import json

import pytest
import torch

from mol._errors import ConfigError
from mol.fusion import MoLConfig, MoLRuntime
from mol.training import MoLTrainer, TrainingConfig, as_blocks
from mol.training.losses import next_token_loss, router_losses

from .merge_fixtures import gpt2_config, llama_config, save_random

VOCAB = 96


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-src")
    return {
        # a wide initialisation: the frozen random head then turns hidden states into sharp
        # logits, so what the adapters learn shows in the loss
        "llama": str(
            save_random(root / "llama", llama_config(num_hidden_layers=2, initializer_range=0.3), 1)
        ),
        "gpt2": str(
            save_random(
                root / "gpt2",
                gpt2_config(n_layer=2, initializer_range=0.3, resid_pdrop=0.0, attn_pdrop=0.0),
                2,
            )
        ),
    }


def _runtime(sources, router="token_level", **config) -> MoLRuntime:
    primary, partner = sources["llama"], sources["gpt2"]
    runtime = MoLRuntime(MoLConfig(models=[primary, partner], router_type=router, **config))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(2):
        runtime.add_layer([(primary, i), (partner, i)], layer_idx=i)
    return runtime


def _pattern_blocks(n: int, length: int = 16, seed: int = 0) -> torch.Tensor:
    """Counting sequences (t, t+s, t+2s, ... mod V): learnable from a token and its successor."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(length)) % VOCAB


def _config(tmp_path, **overrides) -> TrainingConfig:
    base = dict(
        learning_rate=3e-3,
        batch_size=4,
        max_steps=6,
        output_dir=str(tmp_path / "run"),
        load_balancing_coeff=0.01,
        router_z_loss_coeff=0.001,
        entropy_penalty_coeff=0.01,
        seed=3,
    )
    return TrainingConfig(**{**base, **overrides})


def test_every_loss_term_has_gradients_reaching_routers_and_adapters(sources):
    runtime = _runtime(sources).train()
    MoLTrainer(runtime, TrainingConfig())  # sets what trains
    ids = _pattern_blocks(3)
    logits, routings = runtime.logits_and_routing(ids)
    terms = {"lm": next_token_loss(logits, ids), **router_losses(routings)}
    for name, term in terms.items():
        runtime.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        router_grad = sum(
            float(p.grad.abs().sum())
            for n, p in runtime.named_parameters()
            if ".router." in n and p.grad is not None
        )
        assert router_grad > 0, f"{name} does not reach the routers"
        if name == "lm":
            adapter_grads = [
                p.grad
                for n, p in runtime.named_parameters()
                if "adapters" in n and p.grad is not None
            ]
            assert adapter_grads and all(float(g.abs().sum()) > 0 for g in adapter_grads[:2])
    trainable = {n for n, p in runtime.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("embed_in", "head_out")) or ".router." in n or "_adapters." in n
        for n in trainable
    )


def test_padding_is_masked_out_of_the_loss():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = next_token_loss(logits, ids, mask)
    want = torch.nn.functional.cross_entropy(
        torch.cat([logits[0, 2:4], logits[1, :4]]), torch.cat([ids[0, 3:], ids[1, 1:]])
    )
    torch.testing.assert_close(got, want)
    changed = logits.clone()
    changed[0, :2] = 1e3  # what padding positions predict never counts
    torch.testing.assert_close(next_token_loss(changed, ids, mask), want)


def test_training_lowers_held_out_loss_and_leaves_frozen_weights_bit_identical(sources, tmp_path):
    runtime = _runtime(sources)
    frozen = {
        n: p.detach().clone()
        for n, p in runtime.named_parameters()
        if ".router." not in n
        and "adapters" not in n
        and not n.startswith(("embed_in", "head_out"))
    }
    assert any(".experts." in n for n in frozen) and "embed_tokens.weight" in frozen
    trainer = MoLTrainer(runtime, _config(tmp_path, max_steps=25, learning_rate=2e-2))
    held_out = _pattern_blocks(16, seed=99)
    before = trainer.evaluate(held_out)["loss"]
    result = trainer.train(_pattern_blocks(64), held_out)
    after = trainer.evaluate(held_out)["loss"]
    assert after < before - 0.5, (before, after)
    assert len(result.loss_history) == 25 and result.steps == 25
    assert result.eval_history[-1]["step"] == 25
    for name, param in runtime.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"{name} changed"
    # the best checkpoint is a MoL checkpoint that rebuilds with its trained weights
    again = MoLRuntime.load_checkpoint(result.final_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(
            again.compute_logits(held_out[:2]),
            runtime.eval().compute_logits(held_out[:2]),
            rtol=0,
            atol=1e-6,
        )
    assert result.best_checkpoint.is_dir()


def test_resuming_gives_the_same_loss_curve_as_not_stopping(sources, tmp_path):
    data = _pattern_blocks(20)  # 5 micro-batches per epoch: checkpoints land mid-epoch
    kwargs = dict(max_steps=7, save_steps=3, gradient_accumulation_steps=1, router_type=None)
    kwargs.pop("router_type")
    full = MoLTrainer(_runtime(sources, noise_std=0.5), _config(tmp_path / "a", **kwargs)).train(
        data
    )
    checkpoint = tmp_path / "a" / "run" / "checkpoint-3"
    assert (checkpoint / "optimizer.safetensors").is_file() and (
        checkpoint / "rng.safetensors"
    ).is_file()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["progress"]["steps"] == 3 and state["progress"]["batch"] == 3
    resumed = MoLTrainer(_runtime(sources, noise_std=0.5), _config(tmp_path / "b", **kwargs)).train(
        data, resume_from=checkpoint
    )
    assert resumed.steps == 7
    assert resumed.loss_history == pytest.approx(full.loss_history, rel=1e-6, abs=1e-7)
    a, b = (MoLRuntime.load_checkpoint(r.final_checkpoint) for r in (full, resumed))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_accumulation_and_checkpointing_compute_the_same_updates(sources, tmp_path):
    """The next-token loss is a mean over equal-size micro-batches, so batch 4 == 2 x 2
    accumulated (the router losses are not linear in the batch: left out here)."""
    data = _pattern_blocks(16)
    no_aux = dict(load_balancing_coeff=0.0, router_z_loss_coeff=0.0, entropy_penalty_coeff=0.0)
    plain = MoLTrainer(
        _runtime(sources), _config(tmp_path / "p", batch_size=4, max_steps=3, **no_aux)
    ).train(data)
    accumulated = MoLTrainer(
        _runtime(sources),
        _config(tmp_path / "a", batch_size=2, gradient_accumulation_steps=2, max_steps=3, **no_aux),
    ).train(data)
    assert accumulated.lm_loss_history == pytest.approx(plain.lm_loss_history, rel=1e-5)
    recomputed = MoLTrainer(
        _runtime(sources),
        _config(tmp_path / "c", batch_size=4, max_steps=3, use_gradient_checkpointing=True),
    ).train(data)
    with_aux = MoLTrainer(
        _runtime(sources), _config(tmp_path / "d", batch_size=4, max_steps=3)
    ).train(data)
    assert recomputed.loss_history == pytest.approx(with_aux.loss_history, rel=1e-6)


def test_router_learning_rate_and_unfrozen_experts(sources, tmp_path):
    runtime = _runtime(sources)
    trainer = MoLTrainer(
        runtime, _config(tmp_path, router_learning_rate=1e-5, freeze_experts=False)
    )
    groups = trainer.parameter_groups()
    router_ids = {id(p) for n, p in runtime.named_parameters() if ".router." in n}
    for group in groups:
        is_router = {id(p) in router_ids for p in group["params"]}
        assert len(is_router) == 1
        assert group["lr"] == (1e-5 if is_router.pop() else 3e-3)
    assert any(p.requires_grad for n, p in runtime.named_parameters() if ".experts." in n)
    assert not runtime.embed_tokens.weight.requires_grad


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(
        ConfigError, match=r"training\.learning_rat: unknown key \(did you mean 'learning_rate'\?\)"
    ):
        TrainingConfig.from_dict({"learning_rat": 1e-3})
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ConfigError, match="report_to must be None or one of tensorboard, wandb"):
        TrainingConfig(report_to="mlflow")
    with pytest.raises(ConfigError, match="safetensors only"):
        TrainingConfig(use_safetensors=False)
    assert TrainingConfig.from_dict(TrainingConfig(max_steps=3).to_dict()) == TrainingConfig(
        max_steps=3
    )


def test_data_sources_become_blocks(tmp_path, micro_zoo):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_zoo.tokenizer_path)
    text = "def f(x):\n    return x + 1\n" * 20
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": text}) + "\n" + json.dumps({"text": text}) + "\n"
    )
    from_txt = as_blocks(str(tmp_path / "a.txt"), tok, 16)
    from_list = as_blocks([text], tok, 16)
    assert torch.equal(from_txt, from_list)
    assert (
        len(as_blocks(tmp_path / "b.jsonl", tok, 16)) == 2 * len(from_list)
        or len(as_blocks(tmp_path / "b.jsonl", tok, 16)) >= 2 * len(from_list) - 1
    )
    assert torch.equal(as_blocks(Dataset.from_dict({"text": [text]}), tok, 16), from_list)
    mixed = as_blocks("zoo:micro/mixed", tok, 16)
    code = as_blocks("zoo:micro/code", tok, 16)
    assert len(mixed) > len(code) > 0
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1: each line needs a string 'text' field"):
        as_blocks(tmp_path / "bad.jsonl", tok, 16)
    with pytest.raises(ConfigError, match="zoo:<size>/<domain>"):
        as_blocks("zoo:micro/poetry", tok, 16)
    with pytest.raises(ConfigError, match="no such file"):
        as_blocks(str(tmp_path / "missing.txt"), tok, 16)


def test_tracking_backends_are_imported_only_when_asked(sources, tmp_path, monkeypatch):
    """report_to='tensorboard' logs through SummaryWriter (a recording stand-in here)."""
    import sys
    import types

    logged = []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_text(self, *args):
            pass

        def add_scalar(self, name, value, step):
            logged.append((name, step))

        def close(self):
            logged.append(("closed", None))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    config = _config(tmp_path, report_to="tensorboard", logging_steps=2, max_steps=4)
    MoLTrainer(_runtime(sources), config).train(_pattern_blocks(8), _pattern_blocks(4, seed=5))
    assert ("loss", 2) in logged and ("loss", 4) in logged and ("loss", 3) not in logged
    assert ("router/load_balancing", 2) in logged and ("eval/loss", 4) in logged
    assert logged[-1] == ("closed", None)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match="report_to='wandb' needs the wandb package"):
        MoLTrainer(_runtime(sources), _config(tmp_path, report_to="wandb")).train(
            _pattern_blocks(8)
        )


def test_mol_train_runs_a_recipe_and_rejects_typos(micro_zoo, tmp_path):
    import yaml
    from click.testing import CliRunner

    from mol.cli.main import cli
    from mol.training.recipe import build_runtime, load_recipe

    code, prose = str(micro_zoo.path("expert-code")), str(micro_zoo.path("expert-prose"))
    recipe = {
        "runtime": {"models": [code, prose], "router_type": "simple", "layers": "aligned"},
        "training": {
            "max_steps": 4,
            "batch_size": 2,
            "block_size": 32,
            "save_steps": 2,
            "output_dir": str(tmp_path / "out"),
            "learning_rate": 1e-3,
        },
        "data": {"train": "zoo:micro/mixed", "eval": "zoo:micro/mixed@held_out"},
    }
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["train", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained 4 steps" in result.output and "eval loss" in result.output
    trained = MoLRuntime.load_checkpoint(tmp_path / "out" / "final")
    assert len(trained.layers) == trained.infos[code].num_layers  # aligned: every layer
    fresh = build_runtime(load_recipe(path))
    changed = [
        n
        for n, p in trained.named_parameters()
        if not torch.equal(p, dict(fresh.named_parameters())[n])
    ]
    assert changed and all(
        ".router." in n or "adapters" in n or n.startswith(("embed_in", "head_out"))
        for n in changed
    )
    resumed = CliRunner().invoke(
        cli,
        [
            "train",
            str(path),
            "--quiet",
            "--resume",
            str(tmp_path / "out" / "checkpoint-2"),
            "--output-dir",
            str(tmp_path / "again"),
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert "trained 4 steps" in resumed.output
    recipe["training"]["learning_rte"] = 1.0
    path.write_text(yaml.safe_dump(recipe))
    bad = CliRunner().invoke(cli, ["train", str(path), "--quiet"])
    assert bad.exit_code == 1
    assert "training.learning_rte: unknown key (did you mean 'learning_rate'?)" in bad.output
    recipe["training"].pop("learning_rte")
    recipe["runtime"]["layers"] = [[[0, 0], [5, 0]]]
    path.write_text(yaml.safe_dump(recipe))
    bad = CliRunner().invoke(cli, ["train", str(path), "--quiet"])
    assert bad.exit_code == 1 and "runtime.layers[0][1]: model index 5 out of range" in bad.output


def test_a_plain_transformers_model_trains_only_the_named_parameters(tmp_path):
    """Gate-only training of a Mixtral MoE: the gates move, every other weight stays put."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(
        MixtralConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=2,
            num_experts_per_tok=2,
            vocab_size=VOCAB,
        )
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="trainable_parameters"):
        MoLTrainer(model, _config(tmp_path))
    with pytest.raises(ConfigError, match=r"no parameter matches \['\*\.router\.nothing'\]"):
        MoLTrainer(model, _config(tmp_path, trainable_parameters=["*.router.nothing"]))
    gates = [n for n, _ in model.named_parameters() if n.endswith("mlp.gate.weight")]
    assert len(gates) == 2
    config = _config(tmp_path, trainable_parameters=["*.mlp.gate.weight"], max_steps=3)
    result = MoLTrainer(model, config).train(_pattern_blocks(12))
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != (name in gates), name
    reloaded = MixtralForCausalLM.from_pretrained(result.final_checkpoint)
    for name, param in reloaded.named_parameters():
        torch.testing.assert_close(param, dict(model.named_parameters())[name], rtol=0, atol=0)

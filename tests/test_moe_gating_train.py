"""Gate training, inference and the CLI on the micro zoo (real trained base and FFN experts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mol._errors import ConfigError
from mol.cli.moe import gate, moe
from mol.moe.gating import (
    GateTrainConfig,
    MoEInference,
    MoEModel,
    load_gating_network,
    train_gating_network,
)
from mol.moe.gating.data import load_source, split_document
from mol.moe.gating.features import build_feature_encoder, compute_features

_FAST = dict(
    hidden_dims=(32,),
    learning_rate=3e-3,
    num_epochs=6,
    max_examples_per_source=120,
    zoo_size="micro",
    max_length=64,
)


@pytest.fixture(scope="module")
def trained(micro_zoo, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gate") / "gate"
    config = GateTrainConfig(
        base_model=str(micro_zoo.path("base")), data=("code", "prose"), **_FAST
    )
    return out, train_gating_network(config, out)


def test_splits_must_sum_to_one_and_keys_are_checked():
    with pytest.raises(ConfigError, match="sum to 1"):
        GateTrainConfig(base_model="m", data=("a", "b"), train_split=0.7, val_split=0.2)
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        GateTrainConfig.from_dict({"base_model": "m", "data": ["a", "b"], "learning_rat": 0.1})
    with pytest.raises(ConfigError, match="one source per expert"):
        GateTrainConfig(base_model="m", data=("a",))
    with pytest.raises(ConfigError, match="hidden_dims"):
        GateTrainConfig(base_model="m", data=("a", "b"), hidden_dims="512,x")


def test_training_info_selects_on_validation_and_reports_the_held_out_test(trained):
    out, info = trained
    assert {p.name for p in out.iterdir()} == {
        "best_model.safetensors",
        "final_model.safetensors",
        "training_info.json",
    }
    assert json.loads((out / "training_info.json").read_text()) == info
    assert info["config"]["data"] == ["code", "prose"] and info["embedding_dim"] == 32
    sizes = info["split_sizes"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == sum(info["examples_per_expert"]) == 240
    assert sizes["test"] == 36 and sizes["val"] == 36  # 15% of each class, stratified
    epochs = info["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 7))
    # selection: the first epoch with the best validation F1; no test figure per epoch
    val_f1 = [e["val_f1"] for e in epochs]
    assert info["best_epoch"] == val_f1.index(max(val_f1)) + 1
    assert not any(k.startswith("test") for e in epochs for k in e)
    test = info["test"]
    cm = torch.tensor(test["confusion_matrix"])
    assert int(cm.sum()) == sizes["test"]
    assert test["accuracy"] == pytest.approx(float(cm.trace() / cm.sum()))
    tp, fp, fn = cm[1, 1].item(), cm[0, 1].item(), cm[1, 0].item()
    assert test["precision"] == pytest.approx(tp / (tp + fp))
    assert test["recall"] == pytest.approx(tp / (tp + fn))
    assert test["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert test["f1"] > 0.6  # well above chance even on 120 micro-zoo examples per domain
    _, meta = load_gating_network(out / "best_model.safetensors")
    assert meta["epoch"] == info["best_epoch"] and meta["feature"]["layer"] == 0


def test_features_are_cached_and_match_the_moe_gate(trained, micro_zoo, tmp_path):
    out, info = trained
    config = GateTrainConfig(
        base_model=str(micro_zoo.path("base")), data=("code", "prose"), **_FAST
    )
    again = train_gating_network(config, tmp_path / "again")
    assert again["feature"]["cache_hit"] and not info["feature"]["cache_hit"]
    assert again["epochs"] == info["epochs"]  # same features, same seed: same run

    model = MoEModel(
        expert_paths=[micro_zoo.path("expert-code"), micro_zoo.path("expert-prose")],
        gating_model_path=out,
    )
    texts = ["def f(x):\n    return x + 1\n", "The module describes how the interpreter works."]
    from mol.io import load_causal_lm, load_tokenizer

    encoder = build_feature_encoder(load_causal_lm(micro_zoo.path("base")), 0, 64)
    features = compute_features(encoder, load_tokenizer(micro_zoo.path("base")), texts)
    net, _ = load_gating_network(out / "best_model.safetensors")
    want = net.probs(features)
    got = torch.stack([model.get_gating_probs(t) for t in texts])
    torch.testing.assert_close(got, want)
    assert got[0].argmax() == 0 and got[1].argmax() == 1


def test_text_and_jsonl_sources(tmp_path, micro_zoo):
    lines = tmp_path / "a.txt"
    lines.write_text("first example\n\nsecond example\n")
    assert load_source(str(lines)).examples == ("first example", "second example")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": "two", "id": 2}\n')
    assert load_source(str(jsonl)).examples == ("one", "two")
    jsonl.write_text('{"body": "one"}\n')
    with pytest.raises(ConfigError, match="b.jsonl:1: .*'text'"):
        load_source(str(jsonl))
    with pytest.raises(ConfigError, match="did you mean 'code'"):
        load_source("cod")
    pieces = split_document("x" * 70 + "\n\n" + "y" * 300, 100)
    assert pieces == ["x" * 70, "y" * 100, "y" * 100, "y" * 100]


def test_inference_greedy_matches_the_model(trained, micro_zoo, tmp_path):
    out, _ = trained
    runner = MoEInference(
        model1_path=micro_zoo.path("expert-code"),
        model2_path=micro_zoo.path("expert-prose"),
        gating_model_path=out,
        routing_mode="select_one",
    )
    result = runner.generate("import os\nimport sys\n", max_new_tokens=6, do_sample=False)
    probs = result["gating_probs"]
    assert set(probs) == {"model1_prob", "model2_prob"}
    assert sum(probs.values()) == pytest.approx(1.0) and probs["model1_prob"] > 0.5
    ids = runner.tokenizer("import os\nimport sys\n", return_tensors="pt")["input_ids"]
    want = runner.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert result["text"] == runner.tokenizer.decode(want[0, ids.shape[1] :])
    runner.model.save_pretrained(tmp_path / "saved")
    saved = MoEInference(saved_model_path=tmp_path / "saved")
    assert saved.model.routing_mode == "select_one"
    assert saved.generate("import os\nimport sys\n", max_new_tokens=6, do_sample=False) == result
    with pytest.raises(ConfigError, match="not both"):
        MoEInference(saved_model_path=tmp_path / "saved", model1_path="a")


def test_cli_train_and_infer(micro_zoo, tmp_path):
    cli = CliRunner()
    base = str(micro_zoo.path("base"))
    config = tmp_path / "gate.json"
    config.write_text(json.dumps({"zoo_size": "micro", "max_examples_per_source": 60}))
    args = ["train", "--base_model", base, "--output_dir", str(tmp_path / "g"), "--config"]
    args += [str(config), "--hidden_dims", "16", "--num_epochs", "2", "--learning_rate", "1e-3"]
    result = cli.invoke(gate, [*args, "--data", "code", "prose", "-q"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    info = json.loads((tmp_path / "g" / "training_info.json").read_text())
    assert info["config"]["hidden_dims"] == [16] and info["config"]["num_epochs"] == 2
    assert info["config"]["max_examples_per_source"] == 60 and len(info["epochs"]) == 2

    parts = ["infer", "--model1_path", str(micro_zoo.path("expert-code"))]
    parts += ["--model2_path", str(micro_zoo.path("expert-prose"))]
    parts += ["--gating_model_path", str(tmp_path / "g"), "--prompt", "def main():"]
    result = cli.invoke(moe, [*parts, "--max_new_tokens", "4", "--no_sample", "--json", "-q"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload) == {"text", "gating_probs"}
    assert sum(payload["gating_probs"].values()) == pytest.approx(1.0)

    # bad input: a clear one-line message and a non-zero exit
    bad = cli.invoke(gate, [*args, "--data", "code", "prose", "--train_split", "0.9", "-q"])
    assert bad.exit_code == 1 and "sum to 1" in bad.output
    bad = cli.invoke(gate, [*args, "--data", "code", "-q"])
    assert bad.exit_code == 1 and "one source per expert" in bad.output
    bad = cli.invoke(moe, ["infer", "--model1_path", "x", "--prompt", "p", "-q"])
    assert bad.exit_code == 1 and "--model2_path" in bad.output
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"routing_mod": "select_one"}))
    bad = cli.invoke(moe, ["infer", "--config", str(typo), "--prompt", "p", "-q"])
    assert bad.exit_code == 1 and "did you mean 'routing_mode'" in bad.output
    bad = cli.invoke(moe, ["infer", "--saved_model_path", str(tmp_path), "--prompt", "p", "-q"])
    assert bad.exit_code == 1 and "not a saved MoEModel" in bad.output


@pytest.mark.slow
def test_gated_moe_demo_on_the_micro_zoo(micro_zoo, tmp_path):
    from mol.moe.gating.demo import gated_moe_demo

    result = gated_moe_demo(micro_zoo, tmp_path)
    assert set(result) == {"gate_test_f1", "ppl", "routing"}
    assert set(result["ppl"]) == set(result["routing"]) == {"code", "prose"}
    assert result["gate_test_f1"] > 0.85
    # most held-out blocks are sent to their own domain's expert
    assert all(result["routing"][d] > 0.6 for d in ("code", "prose")), result["routing"]
    for domain in ("code", "prose"):  # routed per block, the MoE is about its matching expert
        expert = micro_zoo.perplexity(f"expert-{domain}", domain)
        assert result["ppl"][domain] < expert * 1.05
    assert (tmp_path / "moe" / "model.safetensors").is_file()
    assert (tmp_path / "gate" / "training_info.json").is_file()

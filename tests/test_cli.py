"""The `mol` command: demo, zoo, inspect; errors are one line and a non-zero exit."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner
from transformers import LlamaConfig

from mol.cli.main import cli


def _run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_zoo_list_before_build_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("MOL_CACHE", str(tmp_path))
    code, out = _run("zoo", "list", "--size", "micro")
    assert code == 1
    assert "not built" in out and "mol zoo build --size micro" in out


def test_zoo_build_and_list(micro_zoo):
    code, out = _run("zoo", "build", "--size", "micro", "--quiet")
    assert code == 0, out
    assert str(micro_zoo.root) in out
    code, out = _run("zoo", "list", "--size", "micro")
    assert code == 0, out
    for name in micro_zoo.model_names:
        line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert str(micro_zoo.path(name)) in line
        assert f"{micro_zoo.perplexity(name, 'code'):.2f}" in line


def test_demo_prints_the_perplexity_table(micro_zoo, tmp_path):
    code, out = _run("demo", "--size", "micro", "--quiet", "--out", str(tmp_path))
    assert code == 0, out
    saved = json.loads((tmp_path / "results.json").read_text())["rows"]
    names = [r["name"] for r in saved]
    assert names == [
        *micro_zoo.model_names,
        "merge-linear",
        "merge-slerp",
        "merge-task_arithmetic",
        "merge-ties",
        "fusion-experts",
        "fusion-gpt2+prose",
        "moe-mixtral",
        "moe-mixtral+gates",
        "moe-gated",
    ]
    assert {r["kind"] for r in saved} == {"base", "expert", "merge", "fusion", "moe"}
    gated = next(r for r in saved if r["name"] == "moe-gated")
    assert 0.5 < gated["gate_test_f1"] <= 1 and f"{gated['gate_test_f1']:.3f}" in out
    assert (tmp_path / "moe" / "mixtral" / "config.json").is_file()
    for r in saved:  # routing accuracy is measured for fusions and MoEs
        assert ("routing" in r) == (r["kind"] in ("fusion", "moe"))
        if "routing" in r:
            assert set(r["routing"]) == {"code", "prose"}
            assert all(0 <= v <= 1 for v in r["routing"].values())
        if r["kind"] == "fusion":
            folder = tmp_path / "fusion" / r["name"]
            assert {p.name for p in folder.iterdir()} >= {
                "routing.json",
                "routing.png",
                "routing_tokens.html",
            }
    for r in saved:  # the printed table is the saved one
        row = next(line for line in out.splitlines() if line.startswith(f"| {r['name']} |"))
        assert f"{r['ppl']['code']:.2f} | {r['ppl']['prose']:.2f}" in row
    # each merge was written by the merge engine as an ordinary model directory
    for method in ("linear", "slerp", "task_arithmetic", "ties"):
        assert (tmp_path / "merges" / method / "model.safetensors").is_file()
    for name in micro_zoo.model_names:
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        numbers = [float(x) for x in re.findall(r"\d+\.\d+", row)]
        code_ppl, prose_ppl, mean = numbers
        assert code_ppl == round(micro_zoo.perplexity(name, "code"), 2)
        assert prose_ppl == round(micro_zoo.perplexity(name, "prose"), 2)
        assert abs(mean - (code_ppl + prose_ppl) / 2) <= 0.01


def test_inspect_reports_the_architecture(tmp_path):
    LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=100,
    ).save_pretrained(tmp_path)
    code, out = _run("inspect", str(tmp_path), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["layer_path"] == "model.layers"
    assert (info["num_layers"], info["hidden_dim"], info["intermediate_dim"]) == (3, 32, 48)
    code, out = _run("inspect", str(tmp_path))
    assert code == 0 and re.search(r"layer_path\s+model\.layers", out)


def test_inspect_missing_model_is_one_clear_error(tmp_path):
    missing = tmp_path / "nope"
    code, out = _run("inspect", str(missing))
    assert code == 1
    assert out.startswith("Error: ") and str(missing) in out
    assert "Traceback" not in out


def test_unknown_zoo_size_is_a_usage_error():
    code, out = _run("zoo", "build", "--size", "huge")
    assert code == 2 and "huge" in out

"""Routing analysis, routing plots, perplexity of any model kind, and ``mol eval``: oracles."""

from __future__ import annotations

import html
import json
import math
import re
import struct

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from mol._errors import ConfigError
from mol.cli.eval import eval_group
from mol.eval import (
    RoutingReport,
    analyse_routing,
    evaluate_perplexity,
    perplexity,
    plot_routing_heatmap,
    token_routing,
    token_routing_html,
)
from mol.fusion import MoLConfig, MoLRuntime

from .merge_fixtures import llama_config, save_random

DOMAINS_OWN = {"code": 0, "prose": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread avoids OpenMP contention on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two tiny random Llamas of the same shape (no tokenizer: analysis needs none)."""
    root = tmp_path_factory.mktemp("eval-routing")
    config = llama_config(num_hidden_layers=2)
    a = save_random(root / "expert-code", config, 1)
    b = save_random(root / "expert-prose", config, 2)
    return str(a), str(b)


def _fused(models, n_layers=2, **config) -> MoLRuntime:
    runtime = MoLRuntime(MoLConfig(models=list(models), **config))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(n_layers):
        runtime.add_layer([(m, i) for m in models], layer_idx=i)
    return runtime.eval()


def _force(runtime: MoLRuntime, bias: list[float]) -> MoLRuntime:
    with torch.no_grad():
        for layer in runtime.layers:
            layer.router.gate.weight.zero_()
            layer.router.gate.bias.copy_(torch.tensor(bias))
    return runtime


def _blocks(seed: int, n: int = 5, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 96, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("winner", [0, 1])
def test_forced_router_is_one_hot_decided_and_fully_own(pair, winner):
    runtime = _force(_fused(pair), [30.0, 0.0] if winner == 0 else [0.0, 30.0])
    blocks = {"code": _blocks(0), "prose": _blocks(1)}
    report = analyse_routing(runtime, blocks, DOMAINS_OWN, batch_size=3)
    owner = "code" if winner == 0 else "prose"
    other = "prose" if winner == 0 else "code"
    one_hot = torch.nn.functional.one_hot(torch.tensor(winner), 2).double()
    for domain in ("code", "prose"):
        assert report.mean_weights[domain].shape == (2, 2)
        assert torch.allclose(report.mean_weights[domain], one_hot.expand(2, 2), atol=1e-6)
        assert report.entropy[domain].abs().max() < 1e-6
        assert report.tokens[domain] == 5 * 12
    assert torch.equal(report.own_fraction[owner], torch.ones(2, dtype=torch.float64))
    assert torch.equal(report.own_fraction[other], torch.zeros(2, dtype=torch.float64))
    assert report.accuracy(owner) == 1.0 and report.accuracy(other) == 0.0
    assert report.expert_labels == ["expert-code", "expert-prose"]
    assert report.layer_sources[1] == [f"{pair[0]}:1", f"{pair[1]}:1"]


def test_uniform_router_has_entropy_log_e_and_equal_weights(pair):
    runtime = _force(_fused(pair), [0.0, 0.0])
    report = analyse_routing(runtime, {"code": _blocks(2)}, {"code": 1})
    assert torch.allclose(report.mean_weights["code"], torch.full((2, 2), 0.5, dtype=torch.float64))
    assert torch.allclose(
        report.entropy["code"], torch.full((2,), math.log(2), dtype=torch.float64)
    )
    # exact ties go to the lower index (documented), so expert 1 never tops
    assert report.accuracy("code") == 0.0


def test_padding_is_excluded_and_batching_does_not_matter(pair):
    runtime = _fused(pair)
    with torch.no_grad():  # a decisive, token-dependent router so routing varies per token
        for layer in runtime.layers:
            layer.router.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(7))
    full, short = _blocks(3, n=1, t=10)[0], _blocks(4, n=1, t=6)[0]
    padded = torch.stack([full, torch.cat([short, torch.zeros(4, dtype=torch.long)])])
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    report = analyse_routing(
        runtime, {"code": padded}, {"code": 0}, attention_masks={"code": mask}, batch_size=2
    )
    # oracle: each row alone, unpadded
    stats = [runtime(row.unsqueeze(0), return_router_stats=True)[1] for row in (full, short)]
    for i in range(2):
        w = torch.cat([s[i]["token_weights"][0] for s in stats]).double()  # (16, E)
        assert torch.allclose(report.mean_weights["code"][i], w.mean(0), atol=1e-6)
        entropy = (10 * float(stats[0][i]["entropy"]) + 6 * float(stats[1][i]["entropy"])) / 16
        assert float(report.entropy["code"][i]) == pytest.approx(entropy, abs=1e-6)
        own = float((w.argmax(-1) == 0).double().mean())
        assert float(report.own_fraction["code"][i]) == pytest.approx(own)
    assert report.tokens["code"] == 16
    one_by_one = analyse_routing(
        runtime, {"code": padded}, {"code": 0}, attention_masks={"code": mask}, batch_size=1
    )
    assert torch.allclose(one_by_one.mean_weights["code"], report.mean_weights["code"], atol=1e-6)
    # the oracle is sensitive: counting padding as real changes the figures
    unmasked = analyse_routing(runtime, {"code": padded}, {"code": 0})
    assert unmasked.tokens["code"] == 20
    assert not torch.allclose(unmasked.mean_weights["code"], report.mean_weights["code"])


def test_analysis_rejects_bad_inputs(pair):
    runtime = _fused(pair)
    with pytest.raises(ConfigError, match="own_expert has no entry for domain 'prose'"):
        analyse_routing(runtime, {"prose": _blocks(0)}, {"code": 0})
    with pytest.raises(ConfigError, match=r"own_expert\['code'\] = 2"):
        analyse_routing(runtime, {"code": _blocks(0)}, {"code": 2})
    report = analyse_routing(runtime, {"code": _blocks(0, n=6)}, {"code": 0}, max_blocks=2)
    assert report.tokens["code"] == 2 * 12


def _report(n_layers=3) -> RoutingReport:
    weights = {
        "code": torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]], dtype=torch.float64),
        "prose": torch.tensor([[0.2, 0.8], [0.45, 0.55], [0.5, 0.5]], dtype=torch.float64),
    }
    return RoutingReport(
        domains=["code", "prose"],
        expert_labels=["expert-code", "expert-prose"],
        layer_sources=[[f"a:{i}", f"b:{i}"] for i in range(n_layers)],
        own_expert=dict(DOMAINS_OWN),
        mean_weights=weights,
        entropy={d: torch.full((n_layers,), 0.5, dtype=torch.float64) for d in weights},
        own_fraction={
            "code": torch.tensor([1.0, 0.8, 0.6], dtype=torch.float64),
            "prose": torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64),
        },
        tokens={"code": 100, "prose": 80},
    )


def test_report_dict_is_json_and_round_trips():
    report = _report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["accuracy"] == {"code": pytest.approx(0.8), "prose": pytest.approx(0.6)}
    assert data["layers"][1]["domains"]["prose"]["mean_weights"] == [0.45, 0.55]
    back = RoutingReport.from_dict(data)
    for d in report.domains:
        assert torch.equal(back.mean_weights[d], report.mean_weights[d])
        assert torch.equal(back.own_fraction[d], report.own_fraction[d])
    assert back.own_expert == report.own_expert and back.tokens == report.tokens


def _png_size(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_heatmap_png_has_one_panel_per_domain(tmp_path):
    report = _report()
    path = tmp_path / "sub" / "routing.png"
    fig = plot_routing_heatmap(report, path, dpi=50)
    width, height = fig.get_size_inches()
    assert _png_size(path) == (int(width * 50), int(height * 50))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split()[0] for ax in panels] == ["code", "prose"]
    assert len(fig.axes) == 3  # two panels and the colorbar
    assert "accuracy 80%" in panels[0].get_title()
    cells = [t.get_text() for t in panels[1].texts]
    assert cells == ["0.20", "0.80", "0.45", "0.55", "0.50", "0.50"]
    assert panels[0].images[0].get_array().shape == (3, 2)
    assert [p.name for p in path.parent.iterdir()] == ["routing.png"]  # no temp file left


def test_token_html_escapes_every_token_in_order(tmp_path):
    tokens = ["def", " f(x)", " <b>", " &", "\n    ", "'q\"", "é"]
    weights = torch.rand(2, len(tokens), 2, generator=torch.Generator().manual_seed(0))
    weights = weights / weights.sum(-1, keepdim=True)
    path = token_routing_html(tokens, weights, tmp_path / "t.html", ["code-x", "prose-y"], "T<1>")
    page = path.read_text(encoding="utf-8")
    assert "<b>" not in page and "T&lt;1&gt;" in page and "white-space: pre-wrap" in page
    position = 0
    for token in tokens:
        found = page.find(f">{html.escape(token)}</span>", position)
        assert found > position, token
        position = found
    assert f"layer 1: code-x {float(weights[1, 3, 0]):.2f}" in page
    # colour: the top expert's, deeper as it dominates; white when undecided
    one_layer = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]])
    page = token_routing_html(["a", "b", "c"], one_layer, tmp_path / "c.html", ["x", "y"])
    backgrounds = re.findall(r'style="background:(#[0-9a-f]{6})" title', page.read_text())
    assert backgrounds == ["#4c92c3", "#ffffff", "#ff993e"]  # blue, white, orange
    with pytest.raises(ValueError, match="weights cover 7 tokens but 6"):
        token_routing_html(tokens[:-1], weights, tmp_path / "u.html", ["a", "b"])


def test_perplexity_of_a_single_model_runtime_equals_the_model(pair, tmp_path):
    runtime = _fused(pair[:1])
    model = AutoModelForCausalLM.from_pretrained(pair[0]).eval()
    blocks = _blocks(5, n=6, t=16)
    expected = perplexity(model, blocks, batch_size=4)
    assert perplexity(runtime, blocks, batch_size=4) == pytest.approx(expected, rel=1e-4)
    assert not runtime.training
    runtime.save_checkpoint(tmp_path / "ckpt")
    from_paths = {
        "mol": evaluate_perplexity(str(tmp_path / "ckpt"), {"code": blocks}),
        "hf": evaluate_perplexity(pair[0], {"code": blocks}),
    }
    for ppl in from_paths.values():
        assert ppl["code"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ConfigError, match="token id 200 but the model's vocabulary has 96"):
        evaluate_perplexity(model, {"code": torch.tensor([[1, 200]])}, name="m")


# -- on the micro zoo: real tokenizer, the CLI ----------------------------------------------


@pytest.fixture(scope="module")
def micro_checkpoint(micro_zoo, tmp_path_factory):
    code, prose = str(micro_zoo.path("expert-code")), str(micro_zoo.path("expert-prose"))
    runtime = _fused([code, prose], n_layers=2)
    path = tmp_path_factory.mktemp("eval-ckpt") / "fusion"
    runtime.save_checkpoint(path)
    return path


def test_token_routing_covers_the_text(micro_checkpoint):
    runtime = _force(MoLRuntime.load_checkpoint(micro_checkpoint), [0.0, 30.0])
    text = "def add(a, b):\n    return a + b\n\nThe  river flowed."
    tokens, weights = token_routing(runtime, text)
    assert "".join(tokens) == text
    assert weights.shape == (2, len(tokens), 2)
    assert torch.allclose(weights[..., 1], torch.ones(2, len(tokens)), atol=1e-6)
    short, w = token_routing(runtime, text, max_tokens=3)
    assert short == tokens[:3] and w.shape == (2, 3, 2)
    with pytest.raises(ConfigError, match="context of 64"):
        token_routing(runtime, "x = 1\n" * 200)


def _cli(*args):
    result = CliRunner().invoke(eval_group, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_routing_writes_json_png_and_html(micro_checkpoint, tmp_path):
    out = tmp_path / "routing"
    code, output = _cli(
        "routing", micro_checkpoint, "--size", "micro", "--out", out, "--max-blocks", "3", "-q"
    )
    assert code == 0, output
    data = json.loads((out / "routing.json").read_text())
    assert data["own_expert"] == {"code": 0, "prose": 1}  # inferred from the expert names
    assert data["expert_labels"] == ["expert-code", "expert-prose"]
    assert data["tokens"] == {"code": 3 * 32, "prose": 3 * 32}
    for d in ("code", "prose"):
        assert f"| {d} | expert-{d} | {data['accuracy'][d]:.3f} |" in output
    assert _png_size(out / "routing.png")[0] > 100
    page = (out / "routing_tokens.html").read_text()
    assert page.count('class="tok"') > 20 and "expert-prose" in page
    text = tmp_path / "sample.txt"
    text.write_text("for i in range(3):\n    print(i)\n")
    code, output = _cli(
        "routing",
        micro_checkpoint,
        "--size",
        "micro",
        "--out",
        out,
        "--max-blocks",
        "1",
        "--own",
        "code=1,prose=0",
        "--text",
        text,
        "-q",
    )
    assert code == 0, output
    data = json.loads((out / "routing.json").read_text())
    assert data["own_expert"] == {"code": 1, "prose": 0}
    page = (out / "routing_tokens.html").read_text()
    pieces = re.findall(r'<span class="tok" style="[^"]*" title="[^"]*">(.*?)</span>', page, re.S)
    assert "".join(html.unescape(p) for p in pieces) == text.read_text()


def test_cli_routing_fails_cleanly(micro_checkpoint, tmp_path):
    missing = tmp_path / "nowhere"
    code, output = _cli("routing", missing, "--size", "micro")
    assert code == 1 and f"{missing}: no such checkpoint directory" in output
    assert "Traceback" not in output
    code, output = _cli("routing", tmp_path, "--size", "micro")
    assert code == 1 and "not a MoL checkpoint (no mol_config.json)" in output
    code, output = _cli("routing", micro_checkpoint, "--size", "micro", "--own", "code=0")
    assert code == 1 and "no expert for prose" in output


def test_cli_perplexity_table_and_json(micro_zoo, micro_checkpoint, pair):
    base = micro_zoo.path("base")
    code, output = _cli("perplexity", base, micro_checkpoint, "--size", "micro", "--json", "-q")
    assert code == 0, output
    rows = json.loads(output)["rows"]
    assert [r["name"] for r in rows] == ["base", "fusion"]
    for d in ("code", "prose"):  # the build-time figures of the same blocks
        assert rows[0]["ppl"][d] == pytest.approx(micro_zoo.perplexity("base", d), rel=1e-4)
        assert rows[1]["ppl"][d] > 1.0
    code, output = _cli("perplexity", base, "--size", "micro", "--max-blocks", "2", "-q")
    assert code == 0, output
    assert output.splitlines()[0] == "| model | code | prose |"
    assert output.splitlines()[2].startswith("| base | ")
    code, output = _cli("perplexity", base / "missing", "--size", "micro")
    assert code == 1 and f"{base / 'missing'}: no such model directory" in output
    # another tokenisation (a 96-token random model without a tokenizer) is refused
    code, output = _cli("perplexity", pair[0], "--size", "micro", "--max-blocks", "1", "-q")
    assert code == 1 and "vocabulary has 96 entries" in output and pair[0] in output

"""The micro zoo: real, loadable, reproducible, cached, and never half-built."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mol._errors import ConfigError
from mol.zoo import build_zoo, get_spec, load_zoo, zoo_dir


def _weights(path):
    return load_file(path / "model.safetensors")


def test_every_model_loads_with_stock_transformers(micro_zoo):
    spec = get_spec("micro")
    assert micro_zoo.model_names == ["base", "expert-code", "expert-prose", "gpt2-code"]
    for mspec in spec.models:
        model = AutoModelForCausalLM.from_pretrained(micro_zoo.path(mspec.name))
        assert model.config.model_type == mspec.arch
        assert model.config.hidden_size == mspec.hidden
        assert model.config.vocab_size == spec.vocab_size
        assert (micro_zoo.path(mspec.name) / "model.safetensors").is_file()
        assert not list(micro_zoo.path(mspec.name).glob("*.bin"))
    # the fusion partner really is heterogeneous: another family and another width
    gpt2 = AutoModelForCausalLM.from_pretrained(micro_zoo.path("gpt2-code")).config
    base = AutoModelForCausalLM.from_pretrained(micro_zoo.path("base")).config
    assert gpt2.hidden_size != base.hidden_size


@pytest.mark.parametrize("expert", ["expert-code", "expert-prose"])
def test_experts_differ_from_the_base_only_in_feed_forward_weights(micro_zoo, expert):
    base, tuned = _weights(micro_zoo.path("base")), _weights(micro_zoo.path(expert))
    assert base.keys() == tuned.keys()
    mlp = [k for k in base if ".mlp." in k]
    assert len(mlp) == 3 * get_spec("micro").models[0].layers
    for key in base:
        if key in mlp:
            assert not torch.equal(base[key], tuned[key]), f"{expert}: {key} was not fine-tuned"
        else:
            assert torch.equal(base[key], tuned[key]), f"{expert}: {key} changed"


def test_tokenizer_is_byte_level_and_shared(micro_zoo):
    tok = AutoTokenizer.from_pretrained(micro_zoo.tokenizer_path)
    for text in ["def f(x):\n\treturn x ** 2  # ok\n", "Ünïcödé ✓ 漢字", "<|endoftext|> plain"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.pad_token_id != tok.eos_token_id
    for name in micro_zoo.model_names:
        assert AutoTokenizer.from_pretrained(micro_zoo.path(name)).get_vocab() == tok.get_vocab()


def test_manifest_perplexities_are_reproduced_from_disk(micro_zoo, tmp_path):
    from mol.demo import run_demo

    zoo, rows = run_demo("micro", tmp_path)  # raises if a reloaded model disagrees
    assert zoo.root == micro_zoo.root
    rows = [r for r in rows if r.kind in ("base", "expert")]
    assert [r.name for r in rows] == micro_zoo.model_names
    for row in rows:
        for domain, value in row.ppl.items():
            assert value == pytest.approx(micro_zoo.perplexity(row.name, domain), rel=1e-4)
            assert 1 < value < get_spec("micro").vocab_size


def test_second_build_reuses_the_cache(micro_zoo):
    weights = micro_zoo.path("base") / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = build_zoo("micro")
    assert again.manifest == micro_zoo.manifest
    assert weights.stat().st_mtime_ns == before


def test_build_is_deterministic(micro_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("MOL_CACHE", str(tmp_path))
    rebuilt = build_zoo("micro")
    assert rebuilt.root != micro_zoo.root
    for name in micro_zoo.model_names:
        a, b = _weights(micro_zoo.path(name)), _weights(rebuilt.path(name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert rebuilt.manifest["perplexity"] == micro_zoo.manifest["perplexity"]


def test_stale_cache_is_not_reused(micro_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("MOL_CACHE", str(tmp_path))
    target = zoo_dir("micro")
    target.mkdir(parents=True)
    (target / "manifest.json").write_text(json.dumps({**micro_zoo.manifest, "fingerprint": "x"}))
    assert load_zoo("micro") is None


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import mol.zoo._build as build

    monkeypatch.setenv("MOL_CACHE", str(tmp_path))
    calls = []

    def failing_train(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped midway")
        return 0.0

    monkeypatch.setattr(build, "train_lm", failing_train)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("micro")
    assert len(calls) == 2
    parent = zoo_dir("micro").parent
    assert not zoo_dir("micro").exists()
    assert list(parent.iterdir()) == []  # no temporary sibling left behind either


def test_unknown_size_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown zoo size 'mirco' \(did you mean 'micro'\?\)"):
        build_zoo("mirco")

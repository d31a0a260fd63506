"""Vocabulary alignment: tokenizer_source base / union / a model, against hand-computed rows."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mol._errors import UnsupportedArchitectureError
from mol.io import LazyCheckpoint
from mol.merge import load_merge_config, run_merge

from .merge_fixtures import llama_config, save_random

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _tokenizer(tokens: list[str], path):
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=tokens[0]).save_pretrained(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    a_tokens = [f"t{i}" for i in range(96)]
    b_tokens = [f"t{i}" for i in range(90)] + [f"x{i}" for i in range(10)]
    a = save_random(root / "a", llama_config(num_hidden_layers=2, vocab_size=96), 1)
    b = save_random(root / "b", llama_config(num_hidden_layers=2, vocab_size=100), 2)
    _tokenizer(a_tokens, a)
    _tokenizer(b_tokens, b)
    return str(a), str(b)


def _w(path):
    with LazyCheckpoint(path) as c:
        return {k: c.get_tensor(k) for k in c.keys()}


def _linear(a, b, wa, wb, **extra):
    return load_merge_config(
        {
            "merge_method": "linear",
            "base_model": a,
            **extra,
            "models": [
                {"model": a, "parameters": {"weight": wa}},
                {"model": b, "parameters": {"weight": wb}},
            ],
        }
    )


def test_different_vocabularies_need_a_tokenizer_source(pair, tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match="set tokenizer_source"):
        run_merge(_linear(*pair, 1, 1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_base_vocabulary_keeps_the_base_rows(pair, tmp_path):
    a, b = pair
    run_merge(_linear(a, b, 1.0, 0.0, tokenizer_source="base"), tmp_path / "out")
    got, wa = _w(tmp_path / "out"), _w(a)
    for k in wa:  # weights [1, 0] give model A, vocabulary rows included
        assert torch.equal(got[k], wa[k]), k
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab()
        == AutoTokenizer.from_pretrained(a).get_vocab()
    )


def test_union_vocabulary_rows(pair, tmp_path):
    a, b = pair
    run_merge(_linear(a, b, 1.0, 1.0, tokenizer_source="union"), tmp_path / "out")
    got, wa, wb = _w(tmp_path / "out"), _w(a), _w(b)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    vocab = tok.get_vocab()
    assert len(vocab) == 106 and got[EMB].shape == (106, 32) and got[HEAD].shape == (106, 32)
    import json

    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 106
    for key in (EMB, HEAD):
        # a token both models have: the mean of their rows
        torch.testing.assert_close(got[key][vocab["t5"]], (wa[key][5] + wb[key][5]) / 2)
        # a token only A has: A's row (it is the only donor)
        torch.testing.assert_close(got[key][vocab["t93"]], wa[key][93])
        # a token only B has, appended to the vocabulary: B's row
        torch.testing.assert_close(got[key][vocab["x3"]], wb[key][93])
    assert tok("t5 x3")["input_ids"] == [vocab["t5"], vocab["x3"]]


def test_a_model_as_tokenizer_source(pair, tmp_path):
    a, b = pair
    run_merge(_linear(a, b, 0.0, 1.0, tokenizer_source=b), tmp_path / "out")
    got, wb = _w(tmp_path / "out"), _w(b)
    assert got[EMB].shape == (100, 32)
    torch.testing.assert_close(got[EMB], wb[EMB])


def test_chat_template_builtin_custom_and_unknown(pair, tmp_path):
    from mol._errors import ConfigError

    a, _ = pair
    raw = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}}]}
    run_merge(load_merge_config({**raw, "chat_template": "chatml"}), tmp_path / "c")
    tok = AutoTokenizer.from_pretrained(tmp_path / "c")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    mine = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    run_merge(load_merge_config({**raw, "chat_template": mine}), tmp_path / "j")
    assert (tmp_path / "j" / "chat_template.jinja").read_text() == mine
    with pytest.raises(ConfigError, match=r"unknown template 'chatlm' \(did you mean 'chatml'\?\)"):
        run_merge(load_merge_config({**raw, "chat_template": "chatlm"}), tmp_path / "x")
    assert not (tmp_path / "x").exists()

"""The zoo's text domains and block packing."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from mol.training import pack_texts
from mol.zoo import DOMAINS, load_corpus
from mol.zoo._corpus import _code_documents, _is_held_out, _prose_documents


@pytest.mark.parametrize("domain", DOMAINS)
def test_corpus_split_is_fixed_disjoint_and_capped(domain):
    a = load_corpus(domain, max_train_chars=50_000, max_held_out_chars=10_000)
    b = load_corpus(domain, max_train_chars=50_000, max_held_out_chars=10_000)
    assert a == b and a.fingerprint() == b.fingerprint()
    assert 0 < sum(map(len, a.train)) <= 50_000
    assert 0 < sum(map(len, a.held_out)) <= 10_000
    assert not set(a.train) & set(a.held_out)


@pytest.mark.parametrize("loader", [_code_documents, _prose_documents])
def test_held_out_documents_are_never_in_train(loader):
    docs = loader()
    names = [name for name, _ in docs]
    assert len(names) == len(set(names)) and len(docs) > 50
    held = {text for name, text in docs if _is_held_out(name)}
    train = load_corpus(
        "code" if loader is _code_documents else "prose",
        max_train_chars=10**9,
        max_held_out_chars=10**9,
    )
    assert held == set(train.held_out)
    assert not held & set(train.train)
    # about one document in eight is held out
    assert 0.05 < len(held) / len(docs) < 0.25


def test_code_domain_is_python_and_prose_is_english():
    code = load_corpus("code", max_train_chars=20_000, max_held_out_chars=1)
    prose = load_corpus("prose", max_train_chars=20_000, max_held_out_chars=1)
    code_text, prose_text = "".join(code.train), "".join(prose.train)
    assert code_text.count("def ") > 5 and code_text.count("import ") > 2
    assert prose_text.count(" the ") > 20 and prose_text.count("def ") < code_text.count("def ")


def test_unknown_domain_is_an_error():
    with pytest.raises(ValueError, match="unknown zoo domain 'poetry'"):
        load_corpus("poetry", max_train_chars=1, max_held_out_chars=1)


def test_pack_texts_joins_documents_with_eos_and_drops_the_tail(micro_zoo):
    tok = PreTrainedTokenizerFast.from_pretrained(micro_zoo.tokenizer_path)
    texts = ["def f(x):\n    return x\n", "The quick brown fox.", "print('hi')"]
    expected = []
    for t in texts:
        expected += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    blocks = pack_texts(texts, tok, 4)
    assert blocks.dtype == torch.long and blocks.shape == (len(expected) // 4, 4)
    assert blocks.flatten().tolist() == expected[: blocks.numel()]
    with pytest.raises(ValueError, match="fewer than one block of 1000"):
        pack_texts(texts, tok, 1000)

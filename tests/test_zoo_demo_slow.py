"""The full demo zoo (about 3 minutes on 2 CPU cores): built from scratch and specialised."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from mol.zoo import build_zoo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_zoo(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MOL_CACHE", str(tmp_path_factory.mktemp("demo-cache")))
    yield build_zoo("demo")
    mp.undo()


def test_each_expert_is_clearly_specialised(demo_zoo):
    ppl = demo_zoo.manifest["perplexity"]
    # own domain well below (at least 8 % under) the other expert there
    assert ppl["expert-code"]["code"] < 0.92 * ppl["expert-prose"]["code"]
    assert ppl["expert-prose"]["prose"] < 0.92 * ppl["expert-code"]["prose"]
    # fine-tuning helped on the expert's own domain
    assert ppl["expert-code"]["code"] < ppl["base"]["code"]
    assert ppl["expert-prose"]["prose"] < ppl["base"]["prose"]
    # the GPT-2 partner learned code far better than prose
    assert ppl["gpt2-code"]["code"] < 0.5 * ppl["gpt2-code"]["prose"]


def test_models_are_trained_not_random(demo_zoo):
    vocab = demo_zoo.spec.vocab_size
    for name in demo_zoo.model_names:
        for domain, value in demo_zoo.manifest["perplexity"][name].items():
            assert value < vocab / 4, f"{name} on {domain}: {value}"


def test_demo_models_load_with_stock_transformers(demo_zoo):
    for name in demo_zoo.model_names:
        model = AutoModelForCausalLM.from_pretrained(demo_zoo.path(name))
        assert model.config.vocab_size == demo_zoo.spec.vocab_size

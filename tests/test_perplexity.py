"""Perplexity against known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mol.eval import perplexity


class _FixedLogits(torch.nn.Module):
    """Predicts the next token of ``blocks`` with a chosen log-probability, or uniformly."""

    def __init__(self, vocab: int, perfect: bool):
        super().__init__()
        self.vocab, self.perfect = vocab, perfect
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.perfect:  # the next token is always (current + 1) % vocab
            logits.scatter_(-1, ((input_ids + 1) % self.vocab).unsqueeze(-1), 100.0)
        return SimpleNamespace(logits=logits)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    blocks = torch.randint(0, 50, (5, 9))
    assert perplexity(_FixedLogits(50, perfect=False), blocks, batch_size=2) == pytest.approx(50)


def test_perfect_model_has_perplexity_one():
    blocks = (torch.arange(8).repeat(3, 1) + torch.tensor([[0], [3], [7]])) % 10
    assert perplexity(_FixedLogits(10, perfect=True), blocks) == pytest.approx(1.0, abs=1e-6)


def test_matches_transformers_loss_on_a_real_model(micro_zoo):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_zoo.path("base"))
    blocks = micro_zoo.held_out_blocks("code")[:6]
    with torch.no_grad():
        loss = model(input_ids=blocks, labels=blocks).loss  # mean over all predicted tokens
    assert perplexity(model, blocks, batch_size=6) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_rejects_blocks_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(N, T>=2\)"):
        perplexity(_FixedLogits(5, perfect=False), torch.zeros(7, dtype=torch.long))

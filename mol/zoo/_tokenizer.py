"""The zoo's shared byte-level BPE tokenizer, trained on both domains."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "train_tokenizer"]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and save it as a ``PreTrainedTokenizerFast`` directory.

    Byte-level means every string is encodable (no unknown token), as in GPT-2.
    The end-of-text token doubles as BOS; padding has its own token.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
    )
    fast.save_pretrained(out_dir)
    return fast

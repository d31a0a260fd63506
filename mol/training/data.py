"""Turn text into fixed-size blocks of token ids for language-model training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

__all__ = ["pack_texts"]


def pack_texts(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, block_size: int
) -> torch.Tensor:
    """Tokenise ``texts``, join them with the EOS token and cut into full blocks.

    Args:
        texts: documents; each is followed by ``tokenizer.eos_token_id``.
        tokenizer: any Hugging Face tokenizer with an EOS token.
        block_size: tokens per block.

    Returns:
        LongTensor ``(N, block_size)``; the last partial block is dropped.

    Raises:
        ValueError: the tokenizer has no EOS token, or the texts fill no complete block.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; packing needs one to separate documents")
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"{len(texts)} texts gave {len(ids)} tokens: fewer than one block of {block_size}"
        )
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)

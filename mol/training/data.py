"""Training data: text from files, lists, ``datasets`` datasets or the zoo, packed into blocks.

Every source becomes a LongTensor ``(N, block_size)`` of token ids (:func:`as_blocks`), except
a ready ``DataLoader``, which is used as it is (batches of tensors or of dicts with
``input_ids`` and optionally ``attention_mask``). Named datasets: ``zoo:<size>/<domain>`` with
domain ``code``, ``prose`` or ``mixed`` (both) and an optional ``@held_out`` (default: the
training split), e.g. ``zoo:demo/mixed`` or ``zoo:micro/code@held_out``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mol._errors import ConfigError

__all__ = ["pack_texts", "as_blocks", "read_jsonl", "read_texts", "zoo_texts"]


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


def zoo_texts(name: str) -> list[str]:
    """Documents of a named zoo dataset ``zoo:<size>/<domain>[@held_out]`` (built if missing)."""
    from mol.zoo import DOMAINS, ZOO_SIZES, build_zoo

    spec = name.removeprefix("zoo:")
    spec, _, split = spec.partition("@")
    size, _, domain = spec.partition("/")
    split = split or "train"
    domains = DOMAINS if domain == "mixed" else (domain,)
    if (
        size not in ZOO_SIZES
        or not set(domains) <= set(DOMAINS)
        or split not in ("train", "held_out")
    ):
        raise ConfigError(
            f"{name!r}: named datasets are zoo:<size>/<domain>[@held_out] with size in "
            f"{', '.join(ZOO_SIZES)} and domain in {', '.join((*DOMAINS, 'mixed'))}"
        )
    zoo = build_zoo(size)
    return [doc for d in domains for doc in getattr(zoo.corpus(d), split)]


def read_texts(path: str | os.PathLike) -> list[str]:
    """Documents of a text file: ``.jsonl`` (one ``{"text": ...}`` per line) or plain text.

    A plain-text file is one document; a directory gives one document per ``*.txt`` file.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ConfigError(f"{path}: no .txt files in this directory")
        return [f.read_text(encoding="utf-8") for f in files]
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (and not a zoo:<size>/<domain> dataset name)")
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8")]
    return read_jsonl(path)


def read_jsonl(path: str | os.PathLike) -> list[str]:
    """The ``text`` field of every record of a JSONL file (blank lines skipped)."""
    path = Path(path)
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigError(f"{path}:{n}: each line needs a string 'text' field")
        texts.append(record["text"])
    return texts


def as_blocks(source, tokenizer: PreTrainedTokenizerBase, block_size: int) -> torch.Tensor:
    """Token blocks ``(N, block_size)`` from any supported source.

    Args:
        source: a LongTensor ``(N, T)`` (used as is), a file or directory path, a named zoo
            dataset (``zoo:demo/mixed``), a list of documents (strings), a list of such paths
            / names (concatenated), or a ``datasets`` dataset with a ``text`` column (packed)
            or an ``input_ids`` column of equal-length rows.
        tokenizer / block_size: for packing text.
    """
    if isinstance(source, torch.Tensor):
        if source.ndim != 2 or source.dtype != torch.long:
            raise ConfigError(
                f"token blocks must be a 2-D LongTensor, got {source.dtype} {tuple(source.shape)}"
            )
        return source
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        texts = zoo_texts(name) if name.startswith("zoo:") else read_texts(name)
        return pack_texts(texts, tokenizer, block_size)
    column_names = getattr(source, "column_names", None)
    if column_names is not None:  # a datasets.Dataset
        if "input_ids" in column_names:
            rows = source["input_ids"]
            if len({len(r) for r in rows}) != 1:
                raise ConfigError(
                    "dataset input_ids rows differ in length; give a text column to pack"
                )
            return torch.tensor(rows, dtype=torch.long)
        if "text" in column_names:
            return pack_texts(source["text"], tokenizer, block_size)
        raise ConfigError(f"dataset has neither a 'text' nor an 'input_ids' column: {column_names}")
    if isinstance(source, Sequence) and source and all(isinstance(s, str) for s in source):
        if all(
            s.startswith("zoo:") or (len(s) < 4096 and "\n" not in s and Path(s).exists())
            for s in source
        ):
            return torch.cat([as_blocks(s, tokenizer, block_size) for s in source])
        return pack_texts(source, tokenizer, block_size)
    raise ConfigError(
        f"cannot make training data from {type(source).__name__}: give token blocks, a file, "
        "a zoo:<size>/<domain> name, a list of strings, a datasets dataset or a DataLoader"
    )

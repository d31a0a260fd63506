"""Align vocabularies: one output tokenizer, and each model's token rows permuted into it.

``tokenizer_source`` (or ``tokenizer.source``) picks the output vocabulary:

* ``base``: the base model's (the first model's when there is no base);
* a model reference: that model's;
* ``union``: the base's (or first model's) vocabulary, then every token of the other models
  that it lacks, appended in model order as added tokens. (mergekit rebuilds BPE merges for
  a union; we keep the base tokenizer and add tokens, which encodes the base's text
  identically.)

Rows for a token a model lacks follow mergekit's defaults: the only model that has it
donates its row to everyone; otherwise the base's row when the base has it; otherwise the
mean of the models that have it; no model: zeros. ``tokenizer.tokens`` overrides per token
(a model's row, a model's other token, or zeros; ``force`` applies it even where every model
has the token). ``pad_to_multiple_of`` pads with the mean embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mol._errors import ConfigError
from mol.merge.config import MergeConfiguration, ModelTokenEmbedding, ZeroEmbedding

__all__ = ["VocabAlignment", "build_alignment", "permute_rows"]


@dataclass
class VocabAlignment:
    """The output vocabulary and, per model, ``perm[out_id] = model_id`` (or -1)."""

    tokenizer: object  # a transformers tokenizer to save with the merge
    size: int  # rows of every vocabulary tensor (padded)
    permutations: dict[str, torch.Tensor]  # model -> LongTensor (len(vocab),)
    defaults: dict[int, tuple]  # out_id -> ("model", ref, row) | ("zero",) | ("mean", refs)
    forced: set[int] = field(default_factory=set)


def build_alignment(
    config: MergeConfiguration,
    models: dict[str, Path],
    base: str | None,
    first: str,
    *,
    trust_remote_code: bool = False,
) -> VocabAlignment | None:
    """The alignment the configuration asks for, or None when it names no tokenizer source."""
    from transformers import AutoTokenizer

    source = config.tokenizer_source or (config.tokenizer.source if config.tokenizer else None)
    if source is None:
        return None
    tokenizers = {
        ref: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        for ref, path in models.items()
    }
    vocabs = {ref: tok.get_vocab() for ref, tok in tokenizers.items()}
    anchor = base if base in models else first
    if source == "base":
        out_tok = tokenizers[anchor]
    elif source == "union":
        out_tok = tokenizers[anchor]
        known = set(vocabs[anchor])
        extra = []
        for ref in models:
            for token, _ in sorted(vocabs[ref].items(), key=lambda kv: kv[1]):
                if token not in known:
                    known.add(token)
                    extra.append(token)
        if extra:
            out_tok.add_tokens(extra)
    elif source in models:
        out_tok = tokenizers[source]
    else:
        raise ConfigError(
            f"tokenizer_source: {source!r} is not one of the merged models "
            f"({', '.join(models)}), 'base' or 'union'"
        )
    vocab = out_tok.get_vocab()
    n = max(vocab.values()) + 1
    perms = {}
    for ref in models:
        perm = torch.full((n,), -1, dtype=torch.long)
        for token, out_id in vocab.items():
            src = vocabs[ref].get(token)
            if src is not None:
                perm[out_id] = src
        perms[ref] = perm
    pad = config.tokenizer.pad_to_multiple_of if config.tokenizer else None
    size = n if not pad else -(-n // pad) * pad
    defaults, forced = _defaults(config, vocab, vocabs, perms, base)
    return VocabAlignment(out_tok, size, perms, defaults, forced)


def _defaults(config, vocab, vocabs, perms, base):
    defaults: dict[int, tuple] = {}
    forced: set[int] = set()
    overrides = dict(config.tokenizer.tokens or {}) if config.tokenizer else {}
    refs = list(perms)
    for token, out_id in vocab.items():
        cfg = overrides.get(token)
        has = [ref for ref in refs if perms[ref][out_id] >= 0]
        if cfg is not None and cfg.source is not None:
            defaults[out_id] = _explicit(token, cfg.source, vocabs)
            if cfg.force:
                forced.add(out_id)
            continue
        if len(has) == len(refs):
            continue
        if len(has) == 1:
            defaults[out_id] = ("model", has[0], int(perms[has[0]][out_id]))
        elif not has:
            defaults[out_id] = ("zero",)
        elif base in has:
            defaults[out_id] = ("model", base, int(perms[base][out_id]))
        else:
            defaults[out_id] = ("mean", tuple((r, int(perms[r][out_id])) for r in has))
    return defaults, forced


def _explicit(token, source, vocabs) -> tuple:
    if isinstance(source, ZeroEmbedding):
        return ("zero",)
    if isinstance(source, ModelTokenEmbedding):
        if source.model not in vocabs:
            raise ConfigError(f"tokenizer.tokens.{token}: model {source.model!r} is not merged")
        row = (
            source.token_id
            if source.token_id is not None
            else vocabs[source.model].get(source.token)
        )
        if row is None:
            raise ConfigError(
                f"tokenizer.tokens.{token}: {source.model!r} has no token {source.token!r}"
            )
        return ("model", source.model, int(row))
    if source not in vocabs:
        raise ConfigError(f"tokenizer.tokens.{token}: model {source!r} is not merged")
    if token not in vocabs[source]:
        raise ConfigError(f"tokenizer.tokens.{token}: {source!r} has no token {token!r}")
    return ("model", source, vocabs[source][token])


def permute_rows(
    tensors: Sequence[torch.Tensor], models: Sequence[str], alignment: VocabAlignment
) -> list[torch.Tensor]:
    """Each model's ``(V_m, ...)`` tensor as ``(alignment.size, ...)`` rows of the output vocab.

    Pure: the default rows are computed from ``tensors`` themselves (see the module doc).
    """
    by_model = dict(zip(models, tensors, strict=True))
    first = tensors[0]
    n = next(iter(alignment.permutations.values())).numel()
    default_rows = {}
    for out_id, rule in alignment.defaults.items():
        default_rows[out_id] = _default_row(rule, by_model, first, out_id)
    out = []
    for ref, tensor in by_model.items():
        perm = alignment.permutations[ref]
        if int(perm.max()) >= tensor.shape[0]:
            raise ConfigError(
                f"{ref}: its tokenizer has ids up to {int(perm.max())} but its "
                f"vocabulary tensor has {tensor.shape[0]} rows"
            )
        rows = torch.zeros(
            (alignment.size, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device
        )
        present = perm >= 0
        rows[:n][present] = tensor[perm[present]]
        for out_id, row in default_rows.items():
            if perm[out_id] < 0 or out_id in alignment.forced:
                rows[out_id] = row
        if alignment.size > n:
            rows[n:] = rows[:n].mean(dim=0)
        out.append(rows)
    return out


def _default_row(
    rule: tuple, by_model: dict[str, torch.Tensor], first: torch.Tensor, out_id: int
) -> torch.Tensor:
    if rule[0] == "zero":
        return first.new_zeros(first.shape[1:])
    if rule[0] == "model":
        _, ref, row = rule
        if ref not in by_model:
            raise ConfigError(f"token {out_id}: embedding source {ref!r} is not an input here")
        return by_model[ref][row]
    return torch.stack([by_model[r][row] for r, row in rule[1]]).mean(dim=0)

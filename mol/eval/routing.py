"""Routing analysis of a MoL runtime: which expert each layer sends each domain's tokens to.

:func:`analyse_routing` runs held-out blocks of several domains through a runtime and
summarises, per fused layer and per domain, over real (non-padding) tokens only:

* the mean routing weight of every expert ``(E,)``;
* the mean entropy (nats) of the router's per-token distribution (softmax before top-k, as
  :func:`mol.fusion.aux_losses.router_entropy`): 0 for a decided router, ``log E`` uniform;
* the fraction of tokens whose top expert (largest weight; ties go to the lower index) is the
  domain's *own* expert.

:func:`token_routing` gives the per-token weights of one text, for plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mol._errors import ConfigError
from mol._progress import progress

__all__ = ["RoutingReport", "analyse_routing", "expert_labels", "token_routing"]


@dataclass(eq=False)
class RoutingReport:
    """Per-layer, per-domain routing statistics (see the module docstring).

    Attributes:
        domains: domain names, in the order given.
        expert_labels: one label per expert index (the same index in every fused layer),
            e.g. ``["expert-code", "expert-prose"]``.
        layer_sources: per fused layer, its experts' ``"model:layer"`` sources.
        own_expert: domain -> index of the expert that should win its tokens.
        mean_weights: domain -> ``(L, E)`` mean expert weight over real tokens.
        entropy: domain -> ``(L,)`` mean router entropy (nats) over real tokens.
        own_fraction: domain -> ``(L,)`` fraction of real tokens whose top expert is own.
        tokens: domain -> number of real tokens analysed.
    """

    domains: list[str]
    expert_labels: list[str]
    layer_sources: list[list[str]]
    own_expert: dict[str, int]
    mean_weights: dict[str, torch.Tensor]
    entropy: dict[str, torch.Tensor]
    own_fraction: dict[str, torch.Tensor]
    tokens: dict[str, int]

    @property
    def num_layers(self) -> int:
        """Fused layers ``L``."""
        return len(self.layer_sources)

    @property
    def num_experts(self) -> int:
        """Experts per layer ``E``."""
        return len(self.expert_labels)

    def accuracy(self, domain: str) -> float:
        """Routing accuracy of ``domain``: its own-expert top-1 fraction averaged over layers."""
        if domain not in self.own_fraction:
            raise KeyError(f"no domain {domain!r} in this report; domains: {self.domains}")
        return float(self.own_fraction[domain].mean())

    def to_dict(self) -> dict:
        """JSON-safe form (plain lists and floats); :meth:`from_dict` reads it back."""
        return {
            "domains": list(self.domains),
            "expert_labels": list(self.expert_labels),
            "layer_sources": [list(s) for s in self.layer_sources],
            "own_expert": dict(self.own_expert),
            "tokens": dict(self.tokens),
            "accuracy": {d: self.accuracy(d) for d in self.domains},
            "layers": [
                {
                    "layer": i,
                    "domains": {
                        d: {
                            "mean_weights": [float(w) for w in self.mean_weights[d][i]],
                            "entropy": float(self.entropy[d][i]),
                            "own_fraction": float(self.own_fraction[d][i]),
                        }
                        for d in self.domains
                    },
                }
                for i in range(self.num_layers)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> RoutingReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a ``routing.json``)."""
        domains = list(data["domains"])
        layers = data["layers"]

        def column(domain: str, key: str) -> torch.Tensor:
            return torch.tensor(
                [layer["domains"][domain][key] for layer in layers], dtype=torch.float64
            )

        return cls(
            domains=domains,
            expert_labels=list(data["expert_labels"]),
            layer_sources=[list(s) for s in data["layer_sources"]],
            own_expert={d: int(k) for d, k in data["own_expert"].items()},
            mean_weights={d: column(d, "mean_weights") for d in domains},
            entropy={d: column(d, "entropy") for d in domains},
            own_fraction={d: column(d, "own_fraction") for d in domains},
            tokens={d: int(n) for d, n in data["tokens"].items()},
        )


def expert_labels(runtime) -> list[str]:
    """One label per expert index: the source model's short name when every fused layer takes
    that index from the same model (``"expert-code"``), else ``"expert <j>"``.

    Raises:
        ConfigError: the runtime has no fused layers, or layers have different expert counts.
    """
    sources = _layer_sources(runtime)
    labels = []
    for j in range(len(sources[0])):
        models = {s[j].rsplit(":", 1)[0] for s in sources}
        labels.append(Path(models.pop()).name if len(models) == 1 else f"expert {j}")
    return labels


def _layer_sources(runtime) -> list[list[str]]:
    if not len(runtime.layers):
        raise ConfigError("the runtime has no fused layers: nothing to analyse")
    sources = [[e.source for e in layer.experts] for layer in runtime.layers]
    counts = {len(s) for s in sources}
    if len(counts) != 1:
        raise ConfigError(
            f"routing analysis needs the same number of experts in every fused layer, got "
            f"{[len(s) for s in sources]}"
        )
    return sources


@torch.no_grad()
def analyse_routing(
    runtime,
    blocks_by_domain: dict[str, torch.Tensor],
    own_expert: dict[str, int],
    *,
    batch_size: int = 8,
    max_blocks: int | None = None,
    attention_masks: dict[str, torch.Tensor] | None = None,
) -> RoutingReport:
    """Route every domain's blocks through ``runtime`` and summarise (module docstring).

    Args:
        runtime: a built :class:`~mol.fusion.runtime.MoLRuntime`.
        blocks_by_domain: domain -> LongTensor ``(N, T)`` of token ids.
        own_expert: domain -> expert index (within each fused layer) that owns the domain;
            every domain of ``blocks_by_domain`` needs one.
        batch_size: blocks per forward pass.
        max_blocks: analyse at most this many blocks per domain (None: all).
        attention_masks: domain -> ``(N, T)`` mask (1 real, 0 padding); default all real.

    Returns:
        A :class:`RoutingReport`.

    Raises:
        ConfigError: a domain without an own expert, an expert index out of range, bad
            shapes, or a domain with no real token.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_blocks is not None and max_blocks < 1:
        raise ConfigError(f"max_blocks must be >= 1, got {max_blocks}")
    if not blocks_by_domain:
        raise ConfigError("blocks_by_domain is empty: give at least one domain")
    sources = _layer_sources(runtime)
    num_layers, num_experts = len(sources), len(sources[0])
    for domain in blocks_by_domain:
        if domain not in own_expert:
            raise ConfigError(f"own_expert has no entry for domain {domain!r}")
        if not 0 <= own_expert[domain] < num_experts:
            raise ConfigError(
                f"own_expert[{domain!r}] = {own_expert[domain]}: the runtime's layers have "
                f"{num_experts} experts (0..{num_experts - 1})"
            )
    masks = attention_masks or {}
    unknown = sorted(set(masks) - set(blocks_by_domain))
    if unknown:
        raise ConfigError(f"attention_masks names domains with no blocks: {unknown}")

    was_training = runtime.training
    runtime.eval()
    mean_weights, entropy, own_fraction, tokens = {}, {}, {}, {}
    try:
        for domain, blocks in blocks_by_domain.items():
            mask = masks.get(domain)
            if blocks.ndim != 2:
                raise ConfigError(f"{domain}: blocks must be (N, T), got {tuple(blocks.shape)}")
            if mask is None:
                mask = torch.ones_like(blocks)
            if mask.shape != blocks.shape:
                raise ConfigError(
                    f"{domain}: attention mask {tuple(mask.shape)} does not match blocks "
                    f"{tuple(blocks.shape)}"
                )
            if max_blocks is not None:
                blocks, mask = blocks[:max_blocks], mask[:max_blocks]
            # sums over real tokens, in float64 so long evaluations do not drift
            weight_sum = torch.zeros(num_layers, num_experts, dtype=torch.float64)
            entropy_sum = torch.zeros(num_layers, dtype=torch.float64)
            own_count = torch.zeros(num_layers, dtype=torch.float64)
            n_real = 0
            for start in progress(
                range(0, len(blocks), batch_size), desc=f"routing on {domain}", unit="batch"
            ):
                ids = blocks[start : start + batch_size]
                real = mask[start : start + batch_size].bool()
                batch_real = int(real.sum())
                if batch_real == 0:
                    continue
                _, stats = runtime(ids, real.long(), return_router_stats=True)
                real = real.to(stats[0]["token_weights"].device)
                for i in range(num_layers):
                    w = stats[i]["token_weights"][real].double()  # (n, E), padding dropped
                    weight_sum[i] += w.sum(dim=0).cpu()
                    # the runtime's entropy is a mean over this batch's real tokens
                    entropy_sum[i] += float(stats[i]["entropy"]) * batch_real
                    own_count[i] += float((w.argmax(dim=-1) == own_expert[domain]).sum())
                n_real += batch_real
            if n_real == 0:
                raise ConfigError(f"{domain}: no real token to analyse")
            mean_weights[domain] = weight_sum / n_real
            entropy[domain] = entropy_sum / n_real
            own_fraction[domain] = own_count / n_real
            tokens[domain] = n_real
    finally:
        runtime.train(was_training)
    domains = list(blocks_by_domain)
    return RoutingReport(
        domains=domains,
        expert_labels=expert_labels(runtime),
        layer_sources=sources,
        own_expert={d: int(own_expert[d]) for d in domains},
        mean_weights=mean_weights,
        entropy=entropy,
        own_fraction=own_fraction,
        tokens=tokens,
    )


@torch.no_grad()
def token_routing(
    runtime, text: str, *, max_tokens: int | None = None
) -> tuple[list[str], torch.Tensor]:
    """Per-token routing weights of ``text`` (tokenised by the runtime's primary tokenizer,
    without special tokens).

    Args:
        runtime: a built :class:`~mol.fusion.runtime.MoLRuntime` whose primary has a tokenizer.
        text: the text to route.
        max_tokens: keep only the first this many tokens (None: all; then a text longer than
            the primary's context is an error).

    Returns:
        ``(tokens, weights)``: ``tokens`` are the pieces of ``text`` each token covers (from
        the fast tokenizer's offsets, so ``"".join(tokens)`` is the routed prefix of ``text``,
        whitespace included; a slow tokenizer's pieces are its decoded tokens), and
        ``weights`` is a float ``(L, T, E)`` tensor on the CPU.

    Raises:
        ConfigError: an empty text, or more tokens than the primary model's context.
    """
    tokenizer = runtime.tokenizer
    fast = getattr(tokenizer, "is_fast", False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = list(encoded["input_ids"])
    if max_tokens is not None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        ids = ids[:max_tokens]
    if not ids:
        raise ConfigError("token_routing needs a non-empty text")
    limit = runtime.infos[runtime.primary].max_position_embeddings
    if limit is not None and len(ids) > limit:
        raise ConfigError(
            f"the text is {len(ids)} tokens, more than {runtime.primary}'s context of {limit}; "
            "pass max_tokens"
        )
    if fast:
        offsets = encoded["offset_mapping"]
        starts = [start for start, _ in offsets[: len(ids)]]
        end = len(text) if len(ids) == len(offsets) else offsets[len(ids)][0]
        # each token owns the text up to the next token's start, so gaps (spaces that a
        # pre-tokenizer trimmed from the offsets) stay visible and nothing is lost
        bounds = [0, *starts[1:], end]
        tokens = [text[bounds[k] : bounds[k + 1]] for k in range(len(ids))]
    else:
        tokens = [tokenizer.decode([i]) for i in ids]
    was_training = runtime.training
    runtime.eval()
    try:
        _, stats = runtime(torch.tensor([ids]), return_router_stats=True)
    finally:
        runtime.train(was_training)
    weights = torch.stack([stats[i]["token_weights"][0] for i in range(len(stats))])
    return tokens, weights.float().cpu()

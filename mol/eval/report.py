"""A routing report on disk: ``routing.json``, ``routing.png`` and ``routing_tokens.html``.

What ``mol eval routing`` and the demo write for a MoL runtime on the zoo's held-out text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mol.eval.plots import plot_routing_heatmap, token_routing_html
from mol.eval.routing import RoutingReport, analyse_routing, expert_labels, token_routing
from mol.zoo import DOMAINS

__all__ = ["SAMPLE_TOKENS", "default_sample", "write_routing_report"]

logger = logging.getLogger("mol")
SAMPLE_TOKENS = 256  # the default sample text: at most this many tokens, half code, half prose


def _head(text: str, tokenizer, n_tokens: int) -> str:
    """The longest prefix of ``text`` that is at most ``n_tokens`` tokens."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    return text if len(offsets) <= n_tokens else text[: offsets[n_tokens][0]]


def default_sample(zoo, tokenizer, budget: int) -> str:
    """A snippet of held-out code followed by a snippet of held-out prose."""
    half = max(budget // 2 - 1, 1)
    parts = [_head(zoo.corpus(d).held_out[0], tokenizer, half).rstrip() for d in DOMAINS]
    return "\n\n".join(parts) + "\n"


def write_routing_report(
    runtime,
    zoo,
    out_dir: str | Path,
    own_expert: dict[str, int],
    *,
    text: str | None = None,
    batch_size: int = 8,
    max_blocks: int | None = None,
    title: str = "Token routing",
    extra: dict | None = None,
) -> RoutingReport:
    """Analyse ``runtime``'s routing on the zoo's held-out blocks and write the three files.

    ``text`` is the sample coloured token by token (default: held-out code, then prose), cut
    to the primary's context or :data:`SAMPLE_TOKENS`. ``extra`` goes into ``routing.json``.
    """
    blocks = {d: zoo.held_out_blocks(d) for d in DOMAINS}
    report = analyse_routing(
        runtime, blocks, own_expert, batch_size=batch_size, max_blocks=max_blocks
    )
    tokenizer = runtime.tokenizer
    limit = runtime.infos[runtime.primary].max_position_embeddings or SAMPLE_TOKENS
    budget = min(limit, SAMPLE_TOKENS)
    if text is None:
        text = default_sample(zoo, tokenizer, budget)
    else:
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens > budget:
            logger.warning("colouring the first %d of the sample's %d tokens", budget, n_tokens)
    tokens, weights = token_routing(runtime, text, max_tokens=budget)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**(extra or {}), **report.to_dict()}
    (out_dir / "routing.json.tmp").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "routing.json.tmp").replace(out_dir / "routing.json")
    plot_routing_heatmap(report, out_dir / "routing.png")
    token_routing_html(
        tokens, weights, out_dir / "routing_tokens.html", expert_labels(runtime), title=title
    )
    return report

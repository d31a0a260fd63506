"""Pictures of routing: a heatmap per domain (layers x experts) and a per-token colouring.

matplotlib is imported inside :func:`plot_routing_heatmap` only (it takes a second to import)
and draws with the Agg canvas directly, so no display and no global pyplot state are involved.
Both writers replace their output atomically: a temporary file beside it, then ``os.replace``.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mol.eval.routing import RoutingReport

__all__ = ["plot_routing_heatmap", "token_routing_html", "expert_colours"]

# expert 0 blue, expert 1 orange, then matplotlib's tab10 order (RGB 0..255)
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def expert_colours(num_experts: int) -> list[tuple[int, int, int]]:
    """One RGB colour per expert (blue, orange, green, ...; cycles after ten)."""
    return [_PALETTE[i % len(_PALETTE)] for i in range(num_experts)]


def _write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_routing_heatmap(report: RoutingReport, path: str | os.PathLike, *, dpi: int = 100):
    """Write a PNG: one panel per domain, layers (rows) x experts (columns), each cell the
    mean routing weight (annotated), own experts marked in the column labels, one colorbar.

    Args:
        report: from :func:`mol.eval.routing.analyse_routing`.
        path: the PNG to write (replaced atomically).
        dpi: resolution; the figure is ``(1.2 + 0.9 E) * domains + 1`` by ``1.4 + 0.45 L``
            inches.

    Returns:
        The matplotlib ``Figure`` (one axes per domain plus the colorbar's).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_dom, n_layers, n_exp = len(report.domains), report.num_layers, report.num_experts
    width = (1.2 + 0.9 * n_exp) * n_dom + 1.0
    height = 1.4 + 0.45 * n_layers
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_dom, squeeze=False)[0]
    image = None
    for ax, domain in zip(axes, report.domains, strict=True):
        data = report.mean_weights[domain].float().numpy()
        image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        own = report.own_expert[domain]
        ax.set_xticks(range(n_exp))
        ax.set_xticklabels(
            [f"{label}*" if j == own else label for j, label in enumerate(report.expert_labels)],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([f"layer {i}" for i in range(n_layers)], fontsize=8)
        ax.set_title(f"{domain} (accuracy {report.accuracy(domain):.0%})", fontsize=9)
        for i in range(n_layers):
            for j in range(n_exp):
                value = float(data[i, j])
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.6 else "white",
                )
    fig.colorbar(image, ax=list(axes), label="mean routing weight", shrink=0.9)
    fig.suptitle("MoL routing per domain (* = the domain's own expert)", fontsize=10)
    _write_atomically(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return fig


def _shade(weights: Sequence[float], colours: Sequence[tuple[int, int, int]]) -> str:
    """Background for one token: its top expert's colour, from white (the weights are
    uniform, ``1/E`` each) to 80% of the full colour (all weight on that expert). With two
    experts this is a blue - white - orange scale."""
    n = len(weights)
    top = max(range(n), key=lambda j: weights[j])
    strength = 1.0 if n == 1 else (weights[top] - 1.0 / n) / (1.0 - 1.0 / n)
    strength = 0.8 * min(max(strength, 0.0), 1.0)
    rgb = [round(255 + strength * (c - 255)) for c in colours[top]]
    return "#" + "".join(f"{v:02x}" for v in rgb)


def token_routing_html(
    tokens: Sequence[str],
    weights: torch.Tensor,
    path: str | os.PathLike,
    expert_labels: Sequence[str],
    title: str | None = None,
) -> Path:
    """Write a self-contained HTML page colouring every token by its routing.

    Each token's background is the colour of its top expert (blue for expert 0, orange for
    expert 1, then green, red, ...; weights averaged over layers), the deeper the more that
    expert dominates, white when the weights are uniform; hovering shows the per-layer
    weights. The text is HTML-escaped and whitespace is kept as it is.

    Args:
        tokens: ``T`` text pieces, from :func:`mol.eval.routing.token_routing`.
        weights: ``(L, T, E)`` routing weights.
        path: the HTML file (replaced atomically).
        expert_labels: ``E`` names for the legend and tooltips.
        title: heading and page title (default: "MoL token routing").

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: shapes that disagree with ``tokens`` or ``expert_labels``.
    """
    if weights.ndim != 3:
        raise ValueError(f"weights must be (L, T, E), got {tuple(weights.shape)}")
    n_layers, n_tokens, n_exp = weights.shape
    if n_tokens != len(tokens):
        raise ValueError(f"weights cover {n_tokens} tokens but {len(tokens)} tokens were given")
    if n_exp != len(expert_labels):
        raise ValueError(f"weights have {n_exp} experts but {len(expert_labels)} labels")
    title = title or "MoL token routing"
    colours = expert_colours(n_exp)
    mean = weights.float().mean(dim=0)  # (T, E)
    legend = " ".join(
        f'<span class="tok" style="background:{_shade([1.0 if k == j else 0.0 for k in range(n_exp)], colours)}">'
        f"{html.escape(label)}</span>"
        for j, label in enumerate(expert_labels)
    )
    spans = []
    for t, token in enumerate(tokens):
        tip = "\n".join(
            f"layer {i}: "
            + ", ".join(
                f"{label} {float(weights[i, t, j]):.2f}" for j, label in enumerate(expert_labels)
            )
            for i in range(n_layers)
        )
        spans.append(
            f'<span class="tok" style="background:{_shade(mean[t].tolist(), colours)}" '
            f'title="{html.escape(tip, quote=True)}">{html.escape(token)}</span>'
        )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>\n"
        "body { font-family: sans-serif; margin: 2em; }\n"
        ".text { font-family: monospace; white-space: pre-wrap; line-height: 1.6; "
        "border: 1px solid #ccc; padding: 1em; }\n"
        ".tok { border-radius: 2px; }\n"
        "</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p>Background: each token's top expert, by its routing weights averaged over "
        f"{n_layers} fused layer(s): {legend}; the deeper the colour, the more that expert "
        "dominates (white: undecided). Hover a token for its weights in every layer.</p>\n"
        f'<div class="text">{"".join(spans)}</div>\n'
        "</body>\n</html>\n"
    )
    return _write_atomically(Path(path), lambda tmp: tmp.write_text(page, encoding="utf-8"))

"""Evaluation: held-out perplexity of any model kind, routing statistics and routing plots."""

from mol.eval.perplexity import evaluate_perplexity, is_mol_checkpoint, load_for_eval, perplexity
from mol.eval.plots import plot_routing_heatmap, token_routing_html
from mol.eval.routing import RoutingReport, analyse_routing, expert_labels, token_routing

__all__ = [
    "RoutingReport",
    "analyse_routing",
    "evaluate_perplexity",
    "expert_labels",
    "is_mol_checkpoint",
    "load_for_eval",
    "perplexity",
    "plot_routing_heatmap",
    "token_routing",
    "token_routing_html",
]

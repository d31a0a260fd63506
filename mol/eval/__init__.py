"""Evaluation: held-out perplexity (routing statistics and plots come with fusion)."""

from mol.eval.perplexity import perplexity

__all__ = ["perplexity"]

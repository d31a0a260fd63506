"""Training: data packing (more to come: trainer, losses)."""

from mol.training.data import pack_texts

__all__ = ["pack_texts"]

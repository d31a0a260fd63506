"""Mixture-of-experts: assembling dense experts into a sparse MoE checkpoint, and gating."""

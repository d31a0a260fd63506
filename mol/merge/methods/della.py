"""DELLA-Merging: magnitude-ranked random dropping (MAGPRUNE), then TIES sign election.

Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", https://arxiv.org/abs/2406.11617.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mol.merge.methods._registry import MethodSpec, register
from mol.merge.methods._sparsify import della_magprune
from mol.merge.methods._task_arithmetic import (
    generalized_task_arithmetic,
    pop_lambda,
    require_generator,
    task_arithmetic_params,
)

__all__ = ["della"]


def della(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    weight: Sequence[float],
    density: Sequence[float],
    epsilon: Sequence[float],
    normalize: bool,
    rescale: bool,
    int8_mask: bool,
    **params: Any,
) -> torch.Tensor:
    """Merge ``(M + 1)`` tensors of shape ``S`` (base at ``base_index``) into one ``S`` tensor.

    Each delta is pruned by ``_sparsify.della_magprune`` (keep probabilities from
    ``density_i - epsilon_i`` to ``density_i + epsilon_i`` by magnitude rank along dim 1,
    drawn from ``generator``), then TIES sign election. ``lambda`` arrives in ``params``.

    Raises:
        ValueError: ``generator`` is None, or ``density +/- epsilon`` leaves ``(0, 1)``.
    """
    rng = require_generator("della", generator)
    return generalized_task_arithmetic(
        "della",
        tensors,
        base_index=base_index,
        weight=weight,
        sparsify=lambda delta, i: della_magprune(
            delta, density[i], epsilon[i], rescale, generator=rng
        ),
        consensus=True,
        normalize=normalize,
        lambda_=pop_lambda("della", params),
        per_non_base={"density": density, "epsilon": epsilon},
    )


SPEC = register(
    MethodSpec(
        name="della",
        fn=della,
        params=task_arithmetic_params(normalize=True, rescale=True, epsilon=True),
        base="required",
        randomized=True,
        reference="Deep et al. 2024, https://arxiv.org/abs/2406.11617",
    )
)

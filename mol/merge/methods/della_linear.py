"""DELLA without sign election: MAGPRUNE each task vector, then task arithmetic.

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

__all__ = ["della_linear"]


def della_linear(
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

    MAGPRUNE as in ``della``, then the weighted deltas are summed as in task arithmetic.
    ``int8_mask`` has no effect. ``lambda`` arrives in ``params``.

    Raises:
        ValueError: ``generator`` is None, or ``density +/- epsilon`` leaves ``(0, 1)``.
    """
    rng = require_generator("della_linear", generator)
    return generalized_task_arithmetic(
        "della_linear",
        tensors,
        base_index=base_index,
        weight=weight,
        sparsify=lambda delta, i: della_magprune(
            delta, density[i], epsilon[i], rescale, generator=rng
        ),
        consensus=False,
        normalize=normalize,
        lambda_=pop_lambda("della_linear", params),
        per_non_base={"density": density, "epsilon": epsilon},
    )


SPEC = register(
    MethodSpec(
        name="della_linear",
        fn=della_linear,
        params=task_arithmetic_params(normalize=False, rescale=True, epsilon=True),
        base="required",
        randomized=True,
        reference="Deep et al. 2024, https://arxiv.org/abs/2406.11617",
    )
)

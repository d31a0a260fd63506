"""TIES-Merging: trim each task vector by magnitude, elect signs, merge the agreeing entries.

Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
https://arxiv.org/abs/2306.01708. Sign election is mergekit's ``sum`` consensus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mol.merge.methods._registry import MethodSpec, register
from mol.merge.methods._sparsify import magnitude
from mol.merge.methods._task_arithmetic import (
    generalized_task_arithmetic,
    pop_lambda,
    task_arithmetic_params,
)

__all__ = ["ties"]


def ties(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    weight: Sequence[float],
    density: Sequence[float],
    normalize: bool,
    rescale: bool,
    int8_mask: bool,
    **params: Any,
) -> torch.Tensor:
    """Merge ``(M + 1)`` tensors of shape ``S`` (base at ``base_index``) into one ``S`` tensor.

    Each delta keeps its ``max(1, int(density_i * N))`` largest-magnitude entries (L1-rescaled
    when ``rescale``); the weighted deltas that agree with the elected sign are summed and,
    with ``normalize``, divided by the sum of their weights. ``int8_mask`` has no effect on
    values. ``lambda`` arrives in ``params``.
    """
    return generalized_task_arithmetic(
        "ties",
        tensors,
        base_index=base_index,
        weight=weight,
        sparsify=lambda delta, i: magnitude(delta, density[i], rescale),
        consensus=True,
        normalize=normalize,
        lambda_=pop_lambda("ties", params),
        per_non_base={"density": density},
    )


SPEC = register(
    MethodSpec(
        name="ties",
        fn=ties,
        params=task_arithmetic_params(normalize=True, rescale=False),
        base="required",
        reference="Yadav et al. 2023, https://arxiv.org/abs/2306.01708",
    )
)

"""Model Breadcrumbs with TIES sign election.

Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795; sign election from TIES
(Yadav et al. 2023, https://arxiv.org/abs/2306.01708).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mol.merge.methods._registry import MethodSpec, register
from mol.merge.methods._sparsify import magnitude_outliers
from mol.merge.methods._task_arithmetic import (
    generalized_task_arithmetic,
    pop_lambda,
    task_arithmetic_params,
)

__all__ = ["breadcrumbs_ties"]


def breadcrumbs_ties(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    weight: Sequence[float],
    density: Sequence[float],
    gamma: Sequence[float],
    normalize: bool,
    rescale: bool,
    int8_mask: bool,
    **params: Any,
) -> torch.Tensor:
    """Merge ``(M + 1)`` tensors of shape ``S`` (base at ``base_index``) into one ``S`` tensor.

    Breadcrumbs sparsification (see ``breadcrumbs``), then TIES sign election over the
    weighted deltas. ``int8_mask`` has no effect. ``lambda`` arrives in ``params``.
    """
    return generalized_task_arithmetic(
        "breadcrumbs_ties",
        tensors,
        base_index=base_index,
        weight=weight,
        sparsify=lambda delta, i: magnitude_outliers(delta, density[i], rescale, gamma[i]),
        consensus=True,
        normalize=normalize,
        lambda_=pop_lambda("breadcrumbs_ties", params),
        per_non_base={"density": density, "gamma": gamma},
    )


SPEC = register(
    MethodSpec(
        name="breadcrumbs_ties",
        fn=breadcrumbs_ties,
        params=task_arithmetic_params(normalize=False, rescale=False, gamma=True),
        base="required",
        reference="Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795",
    )
)

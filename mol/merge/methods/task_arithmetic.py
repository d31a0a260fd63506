"""Task arithmetic: add weighted task vectors to the base.

Ilharco et al. 2023, "Editing Models with Task Arithmetic", https://arxiv.org/abs/2212.04089.
``out = B + lambda * sum_i w_i (M_i - B)`` (divided by ``sum_i w_i`` when ``normalize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mol.merge.methods._registry import MethodSpec, register
from mol.merge.methods._task_arithmetic import (
    generalized_task_arithmetic,
    pop_lambda,
    task_arithmetic_params,
)

__all__ = ["task_arithmetic"]


def task_arithmetic(
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

    ``density`` and ``rescale`` are accepted (mergekit's parameter set) but have no effect:
    task arithmetic does not sparsify. ``lambda`` arrives in ``params``.
    """
    return generalized_task_arithmetic(
        "task_arithmetic",
        tensors,
        base_index=base_index,
        weight=weight,
        sparsify=None,
        consensus=False,
        normalize=normalize,
        lambda_=pop_lambda("task_arithmetic", params),
    )


SPEC = register(
    MethodSpec(
        name="task_arithmetic",
        fn=task_arithmetic,
        params=task_arithmetic_params(
            normalize=False, rescale=False, density_doc="no effect (no sparsification)"
        ),
        base="required",
        reference="Ilharco et al. 2023, https://arxiv.org/abs/2212.04089",
    )
)

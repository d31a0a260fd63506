"""DARE (linear): drop task-vector entries at random, rescale, add to the base.

Yu et al. 2023, "Language Models are Super Mario: Absorbing Abilities from Homologous Models
as a Free Lunch", https://arxiv.org/abs/2311.03099.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mol.merge.methods._registry import MethodSpec, register
from mol.merge.methods._sparsify import bernoulli
from mol.merge.methods._task_arithmetic import (
    generalized_task_arithmetic,
    pop_lambda,
    require_generator,
    task_arithmetic_params,
)

__all__ = ["dare_linear"]


def dare_linear(
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

    Each delta keeps every entry with probability ``density_i`` (one Bernoulli mask per model,
    drawn from ``generator`` in input order; ``density_i >= 1`` draws nothing), L1-rescaled
    when ``rescale``; the weighted deltas are summed as in task arithmetic. ``int8_mask`` has
    no effect. ``lambda`` arrives in ``params``.

    Raises:
        ValueError: ``generator`` is None (a randomised method must be reproducible).
    """
    rng = require_generator("dare_linear", generator)
    return generalized_task_arithmetic(
        "dare_linear",
        tensors,
        base_index=base_index,
        weight=weight,
        sparsify=lambda delta, i: bernoulli(delta, density[i], rescale, generator=rng),
        consensus=False,
        normalize=normalize,
        lambda_=pop_lambda("dare_linear", params),
        per_non_base={"density": density},
    )


SPEC = register(
    MethodSpec(
        name="dare_linear",
        fn=dare_linear,
        params=task_arithmetic_params(normalize=False, rescale=True),
        base="required",
        randomized=True,
        reference="Yu et al. 2023, https://arxiv.org/abs/2311.03099",
    )
)

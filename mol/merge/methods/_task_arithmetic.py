"""Generalized task arithmetic: the core shared by task_arithmetic, TIES, DARE, breadcrumbs, DELLA.

For a base ``B`` and models ``M_i`` with weights ``w_i``::

    d_i   = sparsify_i(M_i - B)                      # optional (magnitude, random, ...)
    e_i   = w_i * d_i
    mask  = sign(e_i) == elected sign                # optional, TIES "sum" consensus
    out   = B + lambda * sum_i(mask_i * e_i) / divisor

with ``divisor = sum_i(mask_i * w_i)`` (entries where it is 0 use 1) under consensus, else
``sum_i w_i`` (1 when ``|sum| < 1e-8``), and the division only when ``normalize``. This is
mergekit 0.1.5's ``GeneralizedTaskArithmeticMerge.merge_group`` value for value (Ilharco et al.
2023, https://arxiv.org/abs/2212.04089; Yadav et al. 2023, https://arxiv.org/abs/2306.01708).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mol.merge.methods._common import check_lengths, split_base
from mol.merge.methods._registry import REQUIRED, ParamSpec

__all__ = [
    "generalized_task_arithmetic",
    "sign_consensus_mask",
    "task_arithmetic_params",
    "pop_lambda",
    "require_generator",
]

Sparsifier = Callable[[torch.Tensor, int], torch.Tensor]


def sign_consensus_mask(weighted_deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election with mergekit's ``sum`` consensus.

    The elected sign of each entry is the sign of the sum of the weighted deltas (a zero sum
    elects +). An entry of a model agrees when its own sign equals the elected one, so zero
    deltas never agree.

    Args:
        weighted_deltas: ``(M, *S)``, the M models' weighted deltas stacked.

    Returns:
        ``(M, *S)`` bool mask of agreeing entries.
    """
    elected = torch.where(weighted_deltas.sum(dim=0) >= 0, 1.0, -1.0).to(weighted_deltas.dtype)
    return weighted_deltas.sign() == elected


def generalized_task_arithmetic(
    method: str,
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    weight: Sequence[float],
    sparsify: Sparsifier | None,
    consensus: bool,
    normalize: bool,
    lambda_: float,
    per_non_base: dict[str, Sequence[Any]] | None = None,
) -> torch.Tensor:
    """Merge task vectors relative to a base (see the module docstring).

    Args:
        method: the method's name, for error messages.
        tensors: the inputs, base included, all of shape ``S``.
        base_index: the base's position (required).
        weight: one weight per non-base input, in input order.
        sparsify: ``sparsify(delta, i)`` for the i-th non-base delta, or None.
        consensus: apply TIES sign election (``sum`` method).
        normalize: divide by the (masked) weight sum.
        lambda_: final scale of the merged delta.
        per_non_base: the method's other per-model lists (``density``, ...), checked to have
            one value per non-base input.

    Returns:
        ``S``-shaped tensor in the base's dtype.
    """
    base, others = split_base(method, tensors, base_index, required=True)
    assert base is not None
    check_lengths(method, len(others), weight=weight, **(per_non_base or {}))
    if not others:
        return base

    # Sparsify one delta at a time so only one extra full-size temporary is alive.
    deltas = base.new_empty((len(others), *base.shape))
    for index, tensor in enumerate(others):
        delta = tensor - base
        deltas[index] = sparsify(delta, index) if sparsify is not None else delta
        del delta

    weights = torch.tensor(list(weight), dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * base.dim()))
    deltas.mul_(weights)

    if consensus:
        mask = sign_consensus_mask(deltas)
        mixed = deltas.mul_(mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    del deltas

    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)


def require_generator(method: str, generator: torch.Generator | None) -> torch.Generator:
    """Return ``generator``; raise ValueError when a randomised method got none.

    Falling back to torch's global generator would make merges silently irreproducible.
    """
    if generator is None:
        raise ValueError(f"{method}: randomised method called without a torch.Generator")
    return generator


def pop_lambda(method: str, params: dict[str, Any]) -> float:
    """Take ``lambda`` (a Python keyword, so it arrives in ``**params``) and reject leftovers."""
    if "lambda" not in params:
        raise TypeError(f"{method}: missing parameter 'lambda'")
    value = params.pop("lambda")
    if params:
        raise TypeError(f"{method}: unexpected parameter(s) {', '.join(sorted(params))}")
    return float(value)


def task_arithmetic_params(
    *,
    normalize: bool,
    rescale: bool,
    gamma: bool = False,
    epsilon: bool = False,
    density_doc: str = "fraction of the delta to keep",
) -> tuple[ParamSpec, ...]:
    """The ParamSpecs of a generalized task-arithmetic method, with its defaults.

    ``weight`` (required) and ``density`` are per non-base model; ``gamma`` (breadcrumbs) and
    ``epsilon`` (DELLA) too; ``normalize``, ``rescale``, ``lambda`` and ``int8_mask`` are global.
    """
    params = [
        ParamSpec("weight", float, REQUIRED, "per_non_base", "scale of this model's task vector"),
        ParamSpec("density", float, 1.0, "per_non_base", density_doc),
    ]
    if gamma:
        params.append(
            ParamSpec(
                "gamma",
                float,
                0.01,
                "per_non_base",
                "fraction of largest-magnitude entries to drop",
            )
        )
    if epsilon:
        params.append(
            ParamSpec(
                "epsilon",
                float,
                0.15,
                "per_non_base",
                "spread of keep probabilities around density",
            )
        )
    params += [
        ParamSpec("normalize", bool, normalize, "global", "divide by the sum of the weights"),
        ParamSpec("rescale", bool, rescale, "global", "rescale sparsified deltas to their L1 norm"),
        ParamSpec("lambda", float, 1.0, "global", "scale of the merged task vector"),
        ParamSpec(
            "int8_mask", bool, False, "global", "accepted for mergekit configs; no effect on values"
        ),
    ]
    return tuple(params)

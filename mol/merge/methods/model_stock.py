"""Model Stock: interpolate between the base and the models' average by their mutual angle.

Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models",
https://arxiv.org/abs/2403.19522.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mol.merge.methods._common import split_base
from mol.merge.methods._registry import MethodSpec, ParamSpec, register

__all__ = ["model_stock"]


def model_stock(
    tensors: Sequence[torch.Tensor],
    *,
    base_index: int | None,
    generator: torch.Generator | None,
    filter_wise: bool,
) -> torch.Tensor:
    """``t * mean(W_i) + (1 - t) * W_0`` with ``t = k cos θ / (1 + (k - 1) cos θ)``.

    ``cos θ`` is the mean pairwise cosine of the k offsets ``W_i - W_0`` (a product of norms
    is clamped at 1e-6, so a zero offset has cosine 0). Where ``|1 + (k - 1) cos θ| < 1e-6``
    there is no finite estimate and the base is kept (``t = 0``).

    Args:
        tensors: the base and k >= 2 other tensors, all of shape ``S``.
        base_index: the base's position.
        filter_wise: one angle per row (along the last axis; a 1-D tensor is one row) instead
            of one for the whole flattened tensor.

    Returns:
        ``S``-shaped tensor.
    """
    base, others = split_base("model_stock", tensors, base_index, required=True)
    assert base is not None
    if len(others) < 2:
        raise ValueError(
            f"model_stock: needs at least 2 models besides the base, got {len(others)}"
        )
    shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [w.unsqueeze(0) if w.dim() == 1 else w for w in others]
    else:
        w0 = base.reshape(-1)
        ws = [w.reshape(-1) for w in others]

    offsets = [w - w0 for w in ws]
    cosines = []
    for i, first in enumerate(offsets):
        for second in offsets[i + 1 :]:
            norms = torch.norm(first, dim=-1) * torch.norm(second, dim=-1)
            cosine = (first * second).sum(dim=-1) / norms.clamp(min=1e-6)
            cosines.append(cosine.clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)

    k = len(ws)
    denominator = 1 + (k - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (k * cos_theta) / safe)
    average = ws[0]
    for w in ws[1:]:
        average = average + w
    average = average / k
    return (t * average + (1 - t) * w0).reshape(shape)


SPEC = register(
    MethodSpec(
        name="model_stock",
        fn=model_stock,
        params=(
            ParamSpec(
                "filter_wise", bool, False, "global", "one angle per row instead of per tensor"
            ),
        ),
        base="required",
        min_inputs=3,
        missing_tensor="base_or_skip",
        reference="Jang et al. 2024, https://arxiv.org/abs/2403.19522",
    )
)

"""Block-wise passes over large tensors, and the L1 bookkeeping of rescaled sparsification.

A merge method that works on a whole 32000 x 1024 tensor at once allocates a 131 MB float32
temporary for every intermediate expression, and every pass runs at main-memory speed. Walking
the tensor in blocks of ``BLOCK`` elements keeps each temporary at 1 MiB (float32), so it stays
in cache and the method's peak memory no longer grows with the tensor. Anything global (a
magnitude threshold, an L1 norm, a cosine) is computed first, block by block, then applied in a
second block pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["BLOCK", "flat_blocks", "row_blocks", "l1_norm", "l1_ratio"]

BLOCK = 1 << 18
"""Elements per block: 1 MiB of float32, small enough for the cache of one core."""

_RESCALE_EPS = 1e-7


def flat_blocks(numel: int, size: int = BLOCK) -> Iterator[slice]:
    """Consecutive slices of ``range(numel)``, each at most ``size`` long, in order."""
    for start in range(0, numel, size):
        yield slice(start, min(numel, start + size))


def row_blocks(rows: int, row_numel: int, size: int = BLOCK) -> Iterator[slice]:
    """Consecutive slices of ``range(rows)`` holding about ``size`` elements (at least one row)."""
    step = max(1, size // max(1, row_numel))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def l1_norm(block: torch.Tensor) -> float:
    """``sum(|block|)``, accumulated in float32 for half-precision blocks (as ``sum`` does)."""
    dtype = torch.float32 if block.dtype in (torch.float16, torch.bfloat16) else block.dtype
    return float(torch.linalg.vector_norm(block, 1, dtype=dtype))


def l1_ratio(
    before: float, after: float, dtype: torch.dtype, eps: float = _RESCALE_EPS
) -> torch.Tensor | None:
    """The factor that gives a masked tensor back its L1 norm, or None where none applies.

    mergekit's ``rescaled_masked_tensor`` (``RescaleNorm.l1``): the norms ``before`` and
    ``after`` masking are rounded to ``dtype``, and no rescaling happens when either is below
    ``eps``. A NaN norm gives a NaN factor, as there.

    Returns:
        A 0-dim tensor of ``dtype``, or None.
    """
    before_t = torch.tensor(before, dtype=dtype)
    after_t = torch.tensor(after, dtype=dtype)
    if before_t < eps or after_t < eps:
        return None
    return before_t / after_t

"""Sparsification of task vectors (deltas): magnitude, magnitude outliers, random (DARE), DELLA.

Semantics follow mergekit 0.1.5 ``mergekit/sparsify.py`` value for value; the implementation is
ours. Magnitude selection does not sort: mergekit ranks every entry with ``argsort``
(O(n log n), most of a TIES merge's time); we find the one or two boundary magnitudes by
selection (``_value_at_rank``: ``torch.kthvalue`` on a sampled bracket, O(n)) and build the
mask with a few elementwise passes. On a 4096 x 4096 float32 tensor (2 CPU threads) that is
about 0.15 s against mergekit's 1.9 s. The kept set is the same whenever the magnitudes at the
boundaries are distinct.

Ties: when several entries share a boundary magnitude, mergekit keeps whichever of them its
unstable ``argsort`` happens to put first, which is unspecified. We keep exactly as many as
mergekit does, chosen as a *stable* ascending sort would (ties ranked by position): at a lower
boundary the later positions are kept, at an upper boundary the earlier ones. The values are
identical to mergekit's whenever no tie straddles a boundary.
"""

from __future__ import annotations

import torch

__all__ = [
    "rank_range_mask",
    "rescaled_masked",
    "magnitude",
    "magnitude_outliers",
    "bernoulli",
    "della_magprune",
]

_RESCALE_EPS = 1e-7

# Sample size and bracket half-width (in standard deviations) of _value_at_rank; below
# 4 * _SAMPLE entries a plain kthvalue is as fast.
_SAMPLE = 1 << 16
_SAMPLE_SIGMAS = 8.0


def _value_at_rank(values: torch.Tensor, rank: int) -> torch.Tensor:
    """The value at 0-based ``rank`` in ascending order of ``(N,)`` ``values`` (no NaN).

    Exact, O(N). For large N, a fixed-seed sample of 65,536 entries brackets the answer
    (±8 standard deviations of the sample quantile); the entries inside the bracket, about 3%
    of N, go to ``torch.kthvalue``. If the bracket misses, which a sound bracket almost never
    does, the whole tensor goes to ``kthvalue``. This is about 5-10x faster than ``kthvalue``
    on all entries (which copies them and quickselects), itself about 6x faster than a sort.
    """
    n = values.numel()
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(values, rank + 1).values
    # A private generator: the sample only affects speed, never the result or global RNG.
    sampler = torch.Generator(device=values.device).manual_seed(0)
    sample = values[torch.randint(n, (_SAMPLE,), generator=sampler, device=values.device)]
    q = rank / n
    margin = _SAMPLE_SIGMAS * (_SAMPLE * q * (1 - q)) ** 0.5 + 2
    lo = int(max(0.0, q * _SAMPLE - margin))
    hi = int(min(_SAMPLE - 1.0, q * _SAMPLE + margin))
    inside = torch.ones_like(values, dtype=torch.bool)
    below = 0
    if lo > 0:
        low = torch.kthvalue(sample, lo + 1).values
        below = int(torch.count_nonzero(values < low))
        inside &= values >= low
    if hi < _SAMPLE - 1:
        inside &= values <= torch.kthvalue(sample, hi + 1).values
    candidates = values[inside]
    if below <= rank < below + candidates.numel():
        return torch.kthvalue(candidates, rank - below + 1).values
    return torch.kthvalue(values, rank + 1).values


def rank_range_mask(values: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Mark the entries whose rank in ascending order lies in ``[lo, hi)``.

    Args:
        values: ``(N,)`` real values (magnitudes).
        lo, hi: rank bounds, ``0 <= lo`` and ``hi <= N``; empty when ``hi <= lo``.

    Returns:
        ``(N,)`` bool mask with exactly ``max(0, hi - lo)`` true entries. Equal values are
        ranked by position (a stable sort), so the result is deterministic.
    """
    n = values.numel()
    if hi <= lo:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if lo == 0 and hi == n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if torch.isnan(values).any():
        # Selection ranks NaN last but comparisons with NaN are false: sort this rare case.
        order = torch.sort(values, stable=True).indices
        mask = torch.zeros(n, dtype=torch.bool, device=values.device)
        mask[order[lo:hi]] = True
        return mask

    # The values at ranks lo and hi - 1 bound the kept set: everything strictly between them
    # is kept, and entries equal to a bound are kept by their stable rank.
    bounds = []
    mask = torch.ones(n, dtype=torch.bool, device=values.device)
    if lo > 0:
        low = _value_at_rank(values, lo)
        mask &= values > low
        bounds.append(low)
    if hi < n:
        high = _value_at_rank(values, hi - 1)
        mask &= values < high
        if not bounds or high != bounds[0]:
            bounds.append(high)
    if int(torch.count_nonzero(mask)) == hi - lo:
        return mask
    for bound in bounds:
        ties = torch.nonzero(values == bound).squeeze(1)
        first_rank = int(torch.count_nonzero(values < bound))
        start = max(0, lo - first_rank)
        stop = min(ties.numel(), hi - first_rank)
        mask[ties[start:stop]] = True
    return mask


def rescaled_masked(
    tensor: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = _RESCALE_EPS
) -> torch.Tensor:
    """``tensor * mask``, scaled to keep the L1 norm of ``tensor`` when ``rescale``.

    No rescaling happens when either L1 norm is below ``eps`` (as in mergekit).

    Args:
        tensor: any shape.
        mask: bool or 0/1 float, same shape as ``tensor``.
        rescale: match the L1 norm (mergekit's ``rescale: true``, ``RescaleNorm.l1``).
    """
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _magnitudes(tensor: torch.Tensor) -> torch.Tensor:
    # Half-precision magnitudes convert to float32 exactly, so ranking is unchanged.
    w = tensor.abs().reshape(-1)
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def magnitude(tensor: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the ``k = max(1, int(density * N))`` largest-magnitude entries, zero the rest.

    TIES' "trim" step (Yadav et al. 2023, https://arxiv.org/abs/2306.01708).

    Args:
        tensor: any shape, N entries.
        density: fraction to keep; ``>= 1`` returns ``tensor`` itself (no rescale), ``<= 0``
            returns zeros.
        rescale: rescale the kept entries to the original L1 norm.

    Returns:
        A tensor of ``tensor``'s shape and dtype.
    """
    if density >= 1:
        return tensor
    n = tensor.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * n))
    mask = rank_range_mask(_magnitudes(tensor), n - k, n)
    return rescaled_masked(tensor, mask.reshape(tensor.shape), rescale)


def magnitude_outliers(
    tensor: torch.Tensor, density: float, rescale: bool = False, gamma: float = 0.01
) -> torch.Tensor:
    """Drop the largest ``gamma`` fraction and the smallest entries, keeping ``density``.

    Model Breadcrumbs (Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795). With
    ``N`` entries, ``target = int(density * N)`` and ``top = int(gamma * N)``, the kept
    entries are ranks ``[bot, bot + target)`` in ascending magnitude, where
    ``bot = max(0, N - target - top)`` (fewer outliers are dropped when needed to keep the
    target density). Rank bounds follow Python slice rules, as in mergekit.

    Args:
        tensor: any shape.
        density: fraction to keep; ``>= 1`` returns ``tensor`` itself.
        rescale: rescale the kept entries to the original L1 norm.
        gamma: fraction of the largest magnitudes to drop.
    """
    if density >= 1:
        return tensor
    n = tensor.numel()
    target = int(density * n)
    top = int(gamma * n)
    bot = max(0, n - target - top)
    lo, hi, _ = slice(bot, bot + target).indices(n)
    mask = rank_range_mask(_magnitudes(tensor), lo, hi)
    return rescaled_masked(tensor, mask.reshape(tensor.shape), rescale)


def _random_dtype(tensor: torch.Tensor) -> torch.dtype:
    # torch.bernoulli has no float16 CPU kernel; mergekit draws in float32 there.
    if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return tensor.dtype
    return torch.float32


def bernoulli(
    tensor: torch.Tensor,
    density: float,
    rescale: bool = False,
    *,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Keep each entry independently with probability ``density`` (DARE's drop step).

    Yu et al. 2023, "Language Models are Super Mario", https://arxiv.org/abs/2311.03099.
    With ``rescale`` the kept entries are scaled to the original L1 norm (mergekit's
    choice, rather than the paper's ``1 / density``).

    Args:
        tensor: any shape.
        density: keep probability; ``>= 1`` returns ``tensor`` itself and draws nothing.
        generator: the source of randomness, on ``tensor``'s device. One mask of
            ``tensor.numel()`` draws is taken from it, exactly as ``torch.bernoulli`` on the
            global generator would in mergekit.
    """
    if density >= 1:
        return tensor
    dtype = _random_dtype(tensor)
    probs = torch.full_like(tensor, density, dtype=dtype)
    mask = torch.bernoulli(probs, generator=generator)
    return rescaled_masked(tensor.to(dtype), mask, rescale).to(tensor.dtype)


def della_magprune(
    tensor: torch.Tensor,
    density: float,
    epsilon: float,
    rescale: bool = False,
    *,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """DELLA's MAGPRUNE: keep probabilities grow with each entry's magnitude rank in its row.

    Deep et al. 2024, https://arxiv.org/abs/2406.11617. Along dim 1 (1-D tensors are one
    row), an entry of rank ``r`` (0 = smallest) among ``C`` keeps with probability
    ``density - epsilon + 2 * epsilon * r / (C - 1)``.

    Args:
        tensor: ``(C,)`` or ``(R, C, ...)``; ranks are taken along dim 1.
        density: mean keep probability; ``>= 1`` returns ``tensor``, ``<= 0`` zeros.
        epsilon: half-width of the probability range; ``density +/- epsilon`` must lie in
            ``(0, 1)``.
        generator: the source of randomness (one draw per entry).

    Raises:
        ValueError: epsilon out of range, or fewer than two entries along the ranked axis
            (mergekit fails there too, with an obscure message).
    """
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"della: epsilon {epsilon} must keep density +/- epsilon in (0, 1) (density {density})"
        )
    shape = tensor.shape
    dtype = _random_dtype(tensor)
    rows = tensor.unsqueeze(0) if tensor.dim() == 1 else tensor
    if rows.dim() < 2 or rows.shape[1] < 2:
        raise ValueError(
            f"della: cannot rank magnitudes of a tensor of shape {tuple(shape)} "
            "(needs at least 2 entries along dim 1)"
        )
    count = rows.shape[1]
    # One sort and a scatter give every rank (mergekit sorts twice).
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    rank_shape = [1] * rows.dim()
    rank_shape[1] = count
    ranks = torch.arange(count, dtype=dtype, device=rows.device).reshape(rank_shape)
    ranks = torch.empty(rows.shape, dtype=dtype, device=rows.device).scatter_(
        1, order, ranks.expand(rows.shape)
    )
    rank_norm = (ranks / (count - 1)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(dtype)
    return rescaled_masked(rows.to(dtype), mask, rescale).to(tensor.dtype).reshape(shape)

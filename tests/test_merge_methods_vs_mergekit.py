"""Differential tests: mol.merge.methods against mergekit 0.1.5's own kernels, tensor by tensor.

mergekit is called the way its executor calls a kernel: ``merge_tensors`` builds a
``TensorGroup`` (base at ``base_index``), binds the parameters against the method's spec and
runs the group kernel, or packs a ``TensorBatch`` of one output for batched kernels (linear,
slerp). The sparsifiers are also compared with ``mergekit.sparsify`` directly. Inputs are
random float32 data whose magnitudes have no exact ties, where both implementations keep the
same entries (tie-breaking is tested in test_merge_methods.py). Agreement: max abs diff 1e-6.
"""

from __future__ import annotations

import itertools

import pytest
import torch

mergekit = pytest.importorskip("mergekit")

from mergekit import sparsify as mk_sparsify  # noqa: E402
from mergekit.merge_methods.api import merge_tensors  # noqa: E402

import mol.merge.methods._sparsify as sparsify  # noqa: E402
from mol.merge.methods import REQUIRED, get_method  # noqa: E402

TOL = 1e-6
SHAPES = [(), (1,), (37,), (6, 11), (3, 4, 5)]


def ours(name, tensors, base_index=None, seed=None, **params):
    spec = get_method(name)
    n_non_base = len(tensors) - (base_index is not None)
    kwargs = {}
    for p in spec.params:
        value = params.get(p.name, p.default)
        assert value is not REQUIRED, p.name
        if p.scope == "per_input" and not isinstance(value, list):
            value = [value] * len(tensors)
        elif p.scope == "per_non_base" and not isinstance(value, list):
            value = [value] * n_non_base
        kwargs[p.name] = value
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return spec.fn(list(tensors), base_index=base_index, generator=generator, **kwargs)


def theirs(name, tensors, base_index=None, **params):
    return merge_tensors(list(tensors), name, parameters=params, base_index=base_index)


def inputs(shape, count, seed, distinct=True):
    """``count`` random float32 tensors; with ``distinct``, no two |delta| entries are equal."""
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=g) for _ in range(count)]
    if distinct:
        for tensor in tensors[1:]:
            magnitudes = (tensor - tensors[0]).abs().reshape(-1)
            assert magnitudes.unique().numel() == magnitudes.numel(), "test data has ties"
    return tensors


def distinct_values(shape, seed):
    """Random-signed values of magnitude ~U(0, 2) with no two magnitudes equal (any size)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    steps = torch.randperm(n, generator=g).float() + torch.rand(n, generator=g) * 0.5
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = (signs * steps * (2.0 / n)).reshape(shape)
    assert x.abs().unique().numel() == n
    return x


def assert_close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert diff <= TOL, diff


# --- generalized task arithmetic ----------------------------------------------------------

GTA_SETTINGS = [
    dict(density=d, normalize=n, rescale=r, **{"lambda": lam})
    for d, n, r, lam in itertools.product(
        [0.3, 0.5, 1.0, "mixed"], [True, False], [True, False], [1.0, 0.6]
    )
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties"])
def test_generalized_task_arithmetic_matches(name, count, shape):
    tensors = inputs(shape, count, seed=count)
    n = count - 1
    weights = [0.7, -0.4, 1.3][:n]
    for base_index in (0, count - 1):
        for setting in GTA_SETTINGS:
            params = dict(setting, weight=weights)
            if params["density"] == "mixed":
                params["density"] = [0.3, 1.0, 0.55][:n]
            if name.startswith("breadcrumbs"):
                params["gamma"] = [0.01, 0.1, 0.05][:n]
            expected = theirs(name, tensors, base_index, **params)
            assert_close(ours(name, tensors, base_index, **params), expected)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "breadcrumbs_ties", "breadcrumbs"])
def test_generalized_task_arithmetic_edge_cases_match(name):
    base = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    other = inputs((5, 7), 2, seed=9)[1]
    cases = [
        # every model equals the base: zero deltas, TIES divisor 0 -> 1
        ([base, base.clone(), base.clone()], dict(weight=[1.0, 2.0], density=0.5)),
        # weights summing to zero with normalize (divisor replaced by 1)
        ([base, other, other * 2], dict(weight=[1.0, -1.0], density=0.5, normalize=True)),
        # density 0 and a density so small that k = 1
        ([base, other, -other], dict(weight=[1.0, 0.5], density=[0.0, 0.001])),
        # density above 1 returns the delta unchanged
        ([base, other], dict(weight=[0.5], density=1.5, rescale=True)),
        # the base alone
        ([base], dict(weight=[])),
    ]
    for tensors, params in cases:
        if name.startswith("breadcrumbs"):
            params = dict(params, gamma=0.2)
        assert_close(ours(name, tensors, 0, **params), theirs(name, tensors, 0, **params))


def test_int8_mask_changes_nothing_in_either():
    tensors = inputs((4, 9), 4, seed=2)
    params = dict(weight=[0.5, 1.0, 0.8], density=0.4)
    expected = theirs("ties", tensors, 0, **params)
    assert_close(theirs("ties", tensors, 0, int8_mask=True, **params), expected)
    assert_close(ours("ties", tensors, 0, int8_mask=True, **params), expected)


# --- sparsifiers, called directly ---------------------------------------------------------

DENSITIES = [-0.2, 0.0, 0.001, 0.3, 0.5, 0.9, 0.999, 1.0, 1.3]


@pytest.mark.parametrize("shape", SHAPES + [(300, 1000)], ids=str)
@pytest.mark.parametrize("rescale", [False, True])
def test_magnitude_matches(shape, rescale):
    x = distinct_values(shape, seed=1)
    norm = mk_sparsify.RescaleNorm.l1 if rescale else None
    # mergekit sorts the whole tensor each time: fewer settings for the large shape
    for density in DENSITIES if x.numel() < 10_000 else [0.001, 0.5, 0.9]:
        expected = mk_sparsify.magnitude(x, density, rescale_norm=norm)
        assert_close(sparsify.magnitude(x, density, rescale), expected)


@pytest.mark.parametrize("shape", SHAPES + [(300, 1000)], ids=str)
@pytest.mark.parametrize("rescale", [False, True])
def test_magnitude_outliers_matches(shape, rescale):
    x = distinct_values(shape, seed=2)
    norm = mk_sparsify.RescaleNorm.l1 if rescale else None
    # mergekit sorts the whole tensor each time: fewer settings for the large shape
    small = x.numel() < 10_000
    densities = DENSITIES if small else [0.5, 0.9]
    gammas = [0.0, 0.01, 0.1, 0.5] if small else [0.05]
    for density, gamma in itertools.product(densities, gammas):
        expected = mk_sparsify.magnitude_outliers(x, density, rescale_norm=norm, gamma=gamma)
        assert_close(sparsify.magnitude_outliers(x, density, rescale, gamma), expected)


def test_boundary_ties_keep_the_same_count_and_agree_elsewhere():
    """With ties at a boundary magnitude, mergekit's argsort picks arbitrary ones among them;
    both keep the same number, and agree on every entry whose magnitude is not a boundary."""
    g = torch.Generator().manual_seed(19)
    magnitudes = torch.randint(1, 7, (40, 25), generator=g).float()
    x = torch.where(torch.rand(40, 25, generator=g) < 0.5, -magnitudes, magnitudes)
    w = x.abs().reshape(-1)
    n = w.numel()
    ascending = torch.sort(w).values
    for density in (0.1, 0.3, 0.5, 0.77):
        k = max(1, int(density * n))
        expected = mk_sparsify.magnitude(x, density)
        got = sparsify.magnitude(x, density)
        assert int(torch.count_nonzero(got)) == int(torch.count_nonzero(expected)) == k
        off = x.abs() != ascending[n - k]
        assert torch.equal(got[off], expected[off])
        for gamma in (0.05, 0.2):
            target, top = int(density * n), int(gamma * n)
            bot = max(0, n - target - top)
            expected = mk_sparsify.magnitude_outliers(x, density, gamma=gamma)
            got = sparsify.magnitude_outliers(x, density, gamma=gamma)
            assert int(torch.count_nonzero(got)) == int(torch.count_nonzero(expected)) == target
            off = (x.abs() != ascending[bot]) & (x.abs() != ascending[bot + target - 1])
            assert torch.equal(got[off], expected[off])


def test_rescale_matches_including_tiny_norms():
    x = torch.randn(40, generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(40) % 3 == 0).float()
    for tensor in (x, x * 1e-9, torch.zeros(40)):
        expected = mk_sparsify.rescaled_masked_tensor(tensor, mask, mk_sparsify.RescaleNorm.l1)
        assert_close(sparsify.rescaled_masked(tensor, mask, True), expected)


@pytest.mark.parametrize("rescale", [False, True])
def test_bernoulli_same_stream_matches(rescale):
    """Seeded alike, our generator and torch's global one give mergekit's exact mask."""
    x = torch.randn(8, 50, generator=torch.Generator().manual_seed(4))
    norm = mk_sparsify.RescaleNorm.l1 if rescale else None
    for density in (0.1, 0.5, 0.9, 1.0):
        torch.manual_seed(7)
        expected = mk_sparsify.bernoulli(x, density, rescale_norm=norm)
        got = sparsify.bernoulli(x, density, rescale, generator=torch.Generator().manual_seed(7))
        assert_close(got, expected)


@pytest.mark.parametrize("shape", [(50,), (8, 50), (4, 6, 5)], ids=str)
def test_della_magprune_same_stream_matches(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    for density, epsilon, rescale in [(0.5, 0.15, True), (0.3, 0.2, False), (0.8, 0.1, True)]:
        norm = mk_sparsify.RescaleNorm.l1 if rescale else None
        torch.manual_seed(8)
        expected = mk_sparsify.della_magprune(x, density, epsilon, rescale_norm=norm)
        got = sparsify.della_magprune(
            x, density, epsilon, rescale, generator=torch.Generator().manual_seed(8)
        )
        assert_close(got, expected)


# --- DARE / DELLA: deterministic properties -----------------------------------------------


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
def test_dare_density_one_matches(name):
    tensors = inputs((6, 11), 4, seed=6)
    for normalize, rescale in itertools.product([True, False], repeat=2):
        params = dict(weight=[0.7, -0.4, 1.3], density=1.0, normalize=normalize, rescale=rescale)
        params["lambda"] = 0.8
        expected = theirs(name, tensors, 0, **params)
        assert_close(ours(name, tensors, 0, seed=0, **params), expected)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_randomized_merge_matches_with_same_stream(name):
    """With torch's global generator seeded like ours, mergekit draws the same masks."""
    tensors = inputs((6, 11), 4, seed=7)
    params = dict(weight=[0.7, 0.4, 1.3], density=[0.4, 0.6, 0.5])
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected = theirs(name, tensors, 0, **params)
        assert_close(ours(name, tensors, 0, seed=seed, **params), expected)


def test_dare_kept_fraction_and_fixed_mask_rescale():
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(8))
    for density in (0.3, 0.5):
        got = sparsify.bernoulli(x, density, False, generator=torch.Generator().manual_seed(1))
        assert abs((got != 0).float().mean().item() - density) < 0.02
    mask = (torch.rand(20_000, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    expected = mk_sparsify.rescaled_masked_tensor(x, mask, mk_sparsify.RescaleNorm.l1)
    assert_close(sparsify.rescaled_masked(x, mask, True), expected)


# --- linear / slerp -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_matches(shape):
    tensors = inputs(shape, 4, seed=10)
    for weights, normalize in itertools.product(
        [[1.0, 0.0, 0.0, 0.0], [0.3, 0.7, 0.0, 0.0], [0.2, -0.5, 1.1, 0.4], [2.0, 2.0, 2.0, 2.0]],
        [True, False],
    ):
        expected = theirs("linear", tensors, weight=weights, normalize=normalize)
        assert_close(ours("linear", tensors, weight=weights, normalize=normalize), expected)
    one = tensors[:1]
    assert_close(
        ours("linear", one, weight=[0.5], normalize=False),
        theirs("linear", one, weight=[0.5], normalize=False),
    )


def test_linear_matches_in_bfloat16_and_float64():
    for dtype in (torch.bfloat16, torch.float64):
        tensors = [x.to(dtype) for x in inputs((5, 8), 3, seed=11)]
        params = dict(weight=[0.3, 0.5, 0.9])
        assert_close(ours("linear", tensors, **params), theirs("linear", tensors, **params))


@pytest.mark.parametrize("shape", SHAPES + [(1100, 1000)], ids=str)
def test_slerp_matches(shape):
    """The largest shape spans two of mergekit's 1M-element chunks."""
    a, b = inputs(shape, 2, seed=12, distinct=False)  # slerp ranks nothing
    settings = [(0, 0.3), (1, 0.7)]
    if a.numel() < 10_000:
        settings = list(itertools.product([0, 1], [0.0, 0.3, 1.0, 1.4, -0.2]))
    for base_index, value in settings:
        expected = theirs("slerp", [a, b], base_index, t=value)
        assert_close(ours("slerp", [a, b], base_index, t=value), expected)


def test_slerp_edge_cases_match():
    a = torch.randn(4, 6, generator=torch.Generator().manual_seed(13))
    near = a + 1e-3 * torch.randn(4, 6, generator=torch.Generator().manual_seed(14))
    cases = [
        (a, 2 * a),  # colinear
        (a, -a),  # antipodal
        (a, near),  # dot just above the 0.9995 threshold
        (torch.zeros(4, 6), a),  # zero norm
        (a, torch.zeros(4, 6)),
        (torch.zeros(0), torch.zeros(0)),  # empty
        (torch.tensor(2.0), torch.tensor(-3.0)),  # scalar
        (a.double(), near.double() * 3),  # float64
    ]
    for v0, v1 in cases:
        for value in (0.0, 0.3, 1.0):
            expected = theirs("slerp", [v0, v1], 0, t=value)
            assert_close(ours("slerp", [v0, v1], 0, t=value), expected)


# --- model stock / nuslerp / multislerp / passthrough -------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("count", [3, 4])
def test_model_stock_matches(shape, count):
    tensors = inputs(shape, count, seed=15)
    base = tensors[0]
    variants = [
        tensors,
        [base, tensors[1], tensors[1].clone()] + tensors[3:],  # identical fine-tunes
        [base, tensors[1], 2 * base - tensors[1]] + tensors[3:],  # opposite offsets
        [base, base.clone()] + tensors[2:],  # a zero offset
    ]
    for group in variants:
        for filter_wise in (False, True):
            expected = theirs("model_stock", group, 0, filter_wise=filter_wise)
            assert_close(ours("model_stock", group, 0, filter_wise=filter_wise), expected)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nuslerp_matches(shape):
    tensors = inputs(shape, 3, seed=16)
    for base_index, weights, row_wise, flatten in itertools.product(
        [None, 0, 2],
        [[1.0, 1.0], [0.2, 0.9], [1.0, 0.0], [1.0, -1.0]],
        [False, True],
        [False, True],
    ):
        group = tensors if base_index is not None else tensors[:2]
        params = dict(weight=weights, nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)
        expected = theirs("nuslerp", group, base_index, **params)
        assert_close(ours("nuslerp", group, base_index, **params), expected)
    a = tensors[0]
    for pair in ([a, 3 * a], [a, -a]):  # colinear, antipodal
        expected = theirs("nuslerp", pair, weight=[1.0, 2.0])
        assert_close(ours("nuslerp", pair, weight=[1.0, 2.0]), expected)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_multislerp_matches(shape):
    tensors = inputs(shape, 4, seed=17)
    for base_index, count, normalize, eps in itertools.product(
        [None, 0], [2, 3, 4], [True, False], [1e-8, 1e-3]
    ):
        group = tensors[:count]
        n = count - (base_index is not None)
        params = dict(weight=[0.5, 0.3, 0.9, 0.2][:n], normalize_weights=normalize, eps=eps)
        expected = theirs("multislerp", group, base_index, **params)
        assert_close(ours("multislerp", group, base_index, **params), expected)
    a = tensors[0]
    # antipodal pair: both fall back to linear interpolation
    expected = theirs("multislerp", [a, -a], weight=[1.0, 1.0])
    assert_close(ours("multislerp", [a, -a], weight=[1.0, 1.0]), expected)
    with pytest.raises(ValueError, match="weighted sum"):
        theirs("multislerp", [a, -a, a, -a], weight=[1.0] * 4)
    with pytest.raises(ValueError, match="weighted sum"):
        ours("multislerp", [a, -a, a, -a], weight=[1.0] * 4)


def test_passthrough_matches():
    x = inputs((3, 4), 1, seed=18)[0]
    for scale in (None, 0.5, -2.0):
        assert_close(ours("passthrough", [x], scale=scale), theirs("passthrough", [x], scale=scale))

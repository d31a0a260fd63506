"""Tests for mol.merge.methods: hand-computed oracles and invariants on small tensors."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mol.merge.methods._sparsify as sparsify
from mol._errors import ConfigError
from mol.merge.methods import REQUIRED, get_method, list_methods
from mol.merge.methods._registry import register

ALL_METHODS = {
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "nuslerp",
    "multislerp",
    "passthrough",
}
GTA_METHODS = [
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
]


def run(name, tensors, base_index=None, seed=None, **params):
    """Call a method the way the executor does: spec defaults filled, scalars broadcast."""
    spec = get_method(name)
    unknown = set(params) - {p.name for p in spec.params}
    assert not unknown, unknown
    n_non_base = len(tensors) - (base_index is not None)
    kwargs = {}
    for p in spec.params:
        value = params.get(p.name, p.default)
        assert value is not REQUIRED, f"test forgot required parameter {p.name}"
        if p.scope == "per_input" and not isinstance(value, list):
            value = [value] * len(tensors)
        elif p.scope == "per_non_base" and not isinstance(value, list):
            value = [value] * n_non_base
        kwargs[p.name] = value
    if spec.randomized and seed is None:
        seed = 0
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return spec.fn(list(tensors), base_index=base_index, generator=generator, **kwargs)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- registry -----------------------------------------------------------------------------


def test_every_method_registered_exactly_once():
    names = [spec.name for spec in list_methods()]
    assert len(names) == len(set(names))
    assert set(names) == ALL_METHODS
    for spec in list_methods():
        assert get_method(spec.name) is spec
        assert spec.reference, spec.name
        assert len({p.name for p in spec.params}) == len(spec.params), spec.name


def test_register_duplicate_name_raises():
    before = [s.name for s in list_methods()]
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(get_method("linear")))
    assert [s.name for s in list_methods()] == before


def test_unknown_method_lists_valid_names_and_suggests_closest():
    with pytest.raises(ConfigError) as excinfo:
        get_method("slrep")
    message = str(excinfo.value)
    assert "did you mean 'slerp'" in message
    for name in ALL_METHODS:
        assert name in message


def test_unknown_parameter_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'density'"):
        get_method("ties").param("densty")
    assert get_method("ties").param("density").default == 1.0


EXPECTED_CONTRACTS = {
    # name: (base, min_inputs, max_inputs, min_non_base, max_non_base, missing, randomized)
    "linear": ("ignored", 1, None, None, None, "error", False),
    "slerp": ("required", 2, 2, None, None, "passthrough_singleton", False),
    "task_arithmetic": ("required", 1, None, None, None, "error", False),
    "ties": ("required", 1, None, None, None, "error", False),
    "dare_ties": ("required", 1, None, None, None, "error", True),
    "dare_linear": ("required", 1, None, None, None, "error", True),
    "breadcrumbs": ("required", 1, None, None, None, "error", False),
    "breadcrumbs_ties": ("required", 1, None, None, None, "error", False),
    "della": ("required", 1, None, None, None, "error", True),
    "della_linear": ("required", 1, None, None, None, "error", True),
    "model_stock": ("required", 3, None, None, None, "base_or_skip", False),
    "nuslerp": ("optional", 1, None, 2, 2, "passthrough_singleton", False),
    "multislerp": ("optional", 1, None, 1, None, "error", False),
    "passthrough": ("ignored", 1, 1, None, None, "error", False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONTRACTS))
def test_input_contract(name):
    spec = get_method(name)
    got = (
        spec.base,
        spec.min_inputs,
        spec.max_inputs,
        spec.min_non_base,
        spec.max_non_base,
        spec.missing_tensor,
        spec.randomized,
    )
    assert got == EXPECTED_CONTRACTS[name]


def _gta(normalize, rescale, extra=()):
    return [
        ("weight", float, REQUIRED, "per_non_base"),
        ("density", float, 1.0, "per_non_base"),
        *extra,
        ("normalize", bool, normalize, "global"),
        ("rescale", bool, rescale, "global"),
        ("lambda", float, 1.0, "global"),
        ("int8_mask", bool, False, "global"),
    ]


GAMMA = [("gamma", float, 0.01, "per_non_base")]
EPSILON = [("epsilon", float, 0.15, "per_non_base")]
EXPECTED_PARAMS = {
    "linear": [("weight", float, REQUIRED, "per_input"), ("normalize", bool, True, "global")],
    "slerp": [("t", float, REQUIRED, "global")],
    # Defaults of mergekit 0.1.5's registry (normalize / rescale differ by method).
    "task_arithmetic": _gta(False, False),
    "ties": _gta(True, False),
    "dare_ties": _gta(False, True),
    "dare_linear": _gta(False, True),
    "breadcrumbs": _gta(False, False, GAMMA),
    "breadcrumbs_ties": _gta(False, False, GAMMA),
    "della": _gta(True, True, EPSILON),
    "della_linear": _gta(False, True, EPSILON),
    "model_stock": [("filter_wise", bool, False, "global")],
    "nuslerp": [
        ("weight", float, REQUIRED, "per_non_base"),
        ("nuslerp_row_wise", bool, False, "global"),
        ("nuslerp_flatten", bool, True, "global"),
    ],
    "multislerp": [
        ("weight", float, REQUIRED, "per_non_base"),
        ("normalize_weights", bool, True, "global"),
        ("eps", float, 1e-8, "global"),
    ],
    "passthrough": [("scale", float, None, "per_input")],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_specs(name):
    spec = get_method(name)
    got = [(p.name, p.type, p.default, p.scope) for p in spec.params]
    assert got == EXPECTED_PARAMS[name]
    assert all(p.doc for p in spec.params)


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_function_signature_matches_params(name):
    """Every ParamSpec is a keyword of the function (``lambda`` arrives via ``**params``)."""
    spec = get_method(name)
    signature = inspect.signature(spec.fn).parameters
    keywords = {n for n, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {
        "base_index",
        "generator",
    }
    expected = {p.name for p in spec.params} - {"lambda"}
    assert keywords == expected
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    assert has_var_kw == ("lambda" in {p.name for p in spec.params})


def test_gta_rejects_unknown_and_missing_lambda():
    fn = get_method("ties").fn
    kwargs = dict(weight=[1.0], density=[1.0], normalize=True, rescale=False, int8_mask=False)
    with pytest.raises(TypeError, match="lambda"):
        fn([t(1), t(2)], base_index=0, generator=None, **kwargs)
    with pytest.raises(TypeError, match="bogus"):
        fn([t(1), t(2)], base_index=0, generator=None, bogus=1, **{"lambda": 1.0}, **kwargs)


# --- linear -------------------------------------------------------------------------------

A = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [-1.0, 0.0, 1.0, 2.0]])
B = torch.tensor([[0.0, 2.0, -3.0, 8.0], [1.0, 1.0, 1.0, 1.0], [4.0, 4.0, -4.0, 0.0]])


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_one_hot_returns_input_exactly(normalize):
    assert torch.equal(run("linear", [A, B], weight=[1.0, 0.0], normalize=normalize), A)
    assert torch.equal(run("linear", [A, B], weight=[0.0, 1.0], normalize=normalize), B)


def test_linear_by_hand():
    raw = run("linear", [A, B], weight=[0.5, 2.0], normalize=False)
    # 0.5 * A + 2 * B, element by element
    expected = torch.tensor([[0.5, 5.0, -4.5, 18.0], [4.5, 5.0, 5.5, 6.0], [7.5, 8.0, -7.5, 1.0]])
    assert torch.equal(raw, expected)
    normalized = run("linear", [A, B], weight=[0.5, 2.0], normalize=True)
    assert torch.allclose(normalized, expected / 2.5, atol=1e-6)
    mixed = run("linear", [A, B], weight=[0.3, 0.7])
    assert torch.allclose(mixed, 0.3 * A + 0.7 * B, atol=1e-6)
    assert torch.allclose(mixed[0], t(0.3, 2.0, -1.2, 6.8), atol=1e-6)


def test_linear_zero_weight_sum_with_normalize_raises():
    with pytest.raises(ConfigError, match="sum to 0"):
        run("linear", [A, B], weight=[1.0, -1.0], normalize=True)
    assert torch.allclose(run("linear", [A, B], weight=[1.0, -1.0], normalize=False), A - B)


def test_linear_checks_lengths_and_shapes():
    with pytest.raises(ConfigError, match="'weight' has 1 values for 2 inputs"):
        run("linear", [A, B], weight=[1.0])
    with pytest.raises(ValueError, match="shape"):
        run("linear", [A, A[0]], weight=[1.0, 1.0])


def test_linear_keeps_dtype_and_accumulates_in_float32():
    a, b = A.bfloat16(), B.bfloat16()
    out = run("linear", [a, b], weight=[0.3, 0.7])
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (0.3 * A + 0.7 * B).bfloat16())


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4), hot=st.integers(0, 3), scale=st.floats(0.25, 4.0), seed=st.integers(0, 99)
)
def test_linear_one_hot_property(n, hot, scale, seed):
    hot = hot % n
    tensors = [rand(3, 4, seed=seed + i) for i in range(n)]
    weight = [scale if i == hot else 0.0 for i in range(n)]
    out = run("linear", tensors, weight=weight, normalize=True)
    assert torch.allclose(out, tensors[hot], atol=1e-6)


# --- slerp --------------------------------------------------------------------------------


def test_slerp_endpoints():
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    assert torch.allclose(run("slerp", [a, b], base_index=0, t=0.0), a, atol=1e-6)
    assert torch.allclose(run("slerp", [a, b], base_index=0, t=1.0), b, atol=1e-6)
    # t = 0 is the base wherever it sits
    assert torch.allclose(run("slerp", [a, b], base_index=1, t=0.0), b, atol=1e-6)


def test_slerp_orthogonal_unit_vectors_midpoint():
    a, b = t(1, 0, 0), t(0, 1, 0)
    out = run("slerp", [a, b], base_index=0, t=0.5)
    assert torch.allclose(out, (a + b) / math.sqrt(2), atol=1e-7)
    # a quarter of the way: the angle is pi/2, so cos/sin of pi/8
    out = run("slerp", [a, b], base_index=0, t=0.25)
    assert torch.allclose(out, t(math.cos(math.pi / 8), math.sin(math.pi / 8), 0), atol=1e-7)


def test_slerp_orthogonal_keeps_norms_not_normalized():
    # The angle comes from normalised vectors; the raw vectors are interpolated.
    a, b = t(2, 0), t(0, 4)
    out = run("slerp", [a, b], base_index=0, t=0.5)
    assert torch.allclose(out, (a + b) / math.sqrt(2), atol=1e-6)


@pytest.mark.parametrize("other", [t(2, 4, 6), t(-1, -2, -3), t(1.0, 2.0, 3.0001)])
def test_slerp_colinear_and_antipodal_fall_back_to_lerp(other):
    a = t(1, 2, 3)
    out = run("slerp", [a, other], base_index=0, t=0.3)
    assert torch.allclose(out, 0.7 * a + 0.3 * other, atol=1e-6)


def test_slerp_zero_base_counts_as_orthogonal():
    # mergekit 0.1.5: a zero norm is replaced by 1, so the dot is 0 and theta = pi/2.
    v = t(1, 2, 3)
    out = run("slerp", [torch.zeros(3), v], base_index=0, t=0.3)
    assert torch.allclose(out, math.sin(0.3 * math.pi / 2) * v, atol=1e-6)


def test_slerp_contract_errors():
    with pytest.raises(ValueError, match="base"):
        run("slerp", [A, B], base_index=None, t=0.5)
    with pytest.raises(ValueError, match="exactly one other"):
        run("slerp", [A, B, A], base_index=0, t=0.5)


# --- task arithmetic ----------------------------------------------------------------------

BASE = t(1, 2, 3)
M1 = t(2, 2, 2)  # delta (1, 0, -1)
M2 = t(0, 4, 3)  # delta (-1, 2, 0)


def test_task_arithmetic_by_hand():
    # 1 + 2 * (0.5 * (1, 0, -1) + (-1, 2, 0)) = base + 2 * (-0.5, 2, -0.5)
    out = run("task_arithmetic", [BASE, M1, M2], base_index=0, weight=[0.5, 1.0], **{"lambda": 2.0})
    assert torch.allclose(out, t(0, 6, 2))
    normalized = run(
        "task_arithmetic", [BASE, M1, M2], base_index=0, weight=[0.5, 1.0], normalize=True
    )
    assert torch.allclose(normalized, BASE + t(-0.5, 2, -0.5) / 1.5)


def test_task_arithmetic_base_position_and_base_only():
    out = run("task_arithmetic", [M1, BASE, M2], base_index=1, weight=[0.5, 1.0])
    assert torch.allclose(out, BASE + t(-0.5, 2, -0.5))
    assert torch.equal(run("task_arithmetic", [BASE], base_index=0, weight=[]), BASE)


def test_task_arithmetic_requires_base_and_aligned_weights():
    with pytest.raises(ValueError, match="base"):
        run("task_arithmetic", [M1, M2], base_index=None, weight=[1.0, 1.0])
    with pytest.raises(ConfigError, match="'weight' has 1 values for 2 inputs"):
        run("task_arithmetic", [BASE, M1, M2], base_index=0, weight=[1.0])


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(GTA_METHODS),
    n=st.integers(1, 3),
    weights=st.lists(st.floats(-2, 2).filter(lambda w: abs(w) > 1e-3), min_size=3, max_size=3),
    density=st.sampled_from([0.2, 0.5, 1.0]),
    normalize=st.booleans(),
    lam=st.floats(0.1, 3),
)
def test_gta_all_models_equal_base_returns_base(name, n, weights, density, normalize, lam):
    base = rand(5, 6, seed=n)
    out = run(
        name,
        [base] * (n + 1),
        base_index=0,
        weight=weights[:n],
        density=density,
        normalize=normalize,
        **{"lambda": lam},
    )
    assert torch.equal(out, base)


# --- TIES ---------------------------------------------------------------------------------


def test_ties_one_model_full_density_returns_it():
    base, model = rand(3, 4, seed=1), rand(3, 4, seed=2)
    out = run("ties", [base, model], base_index=0, weight=1.0, density=1.0)
    assert torch.allclose(out, model, atol=1e-6)


def test_ties_sign_election_by_hand():
    base = torch.zeros(4)
    m1, m2 = t(1, -2, 3, 0), t(-3, 1, 1, 2)
    # sums (-2, -1, 4, 2) elect (-, -, +, +); zero deltas never agree.
    # agreeing: m1 (F, T, T, F), m2 (T, F, T, T)
    raw = run("ties", [base, m1, m2], base_index=0, weight=1.0, normalize=False)
    assert torch.equal(raw, t(-3, -2, 4, 2))
    normalized = run("ties", [base, m1, m2], base_index=0, weight=1.0)
    assert torch.equal(normalized, t(-3, -2, 2, 2))


def test_ties_election_uses_weighted_sum():
    base, m1, m2 = t(0.0), t(1.0), t(-3.0)
    # weights (4, 1): 4 - 3 > 0 elects +, so only m1 counts: 4 * 1 / 4
    assert torch.equal(run("ties", [base, m1, m2], base_index=0, weight=[4.0, 1.0]), t(1.0))
    # equal weights: -2 elects -, so only m2 counts
    assert torch.equal(run("ties", [base, m1, m2], base_index=0, weight=1.0), t(-3.0))
    # a zero sum elects +
    assert torch.equal(run("ties", [base, t(2.0), t(-2.0)], base_index=0, weight=1.0), t(2.0))


def test_ties_trims_by_magnitude_and_int8_mask_changes_nothing():
    base = torch.zeros(4)
    model = t(1, -4, 2, -3)
    out = run("ties", [base, model], base_index=0, weight=1.0, density=0.5)
    assert torch.equal(out, t(0, -4, 0, -3))
    tensors = [rand(3, 4, seed=s) for s in range(4)]
    kwargs = dict(base_index=0, weight=[0.5, 1.0, -0.3], density=0.5)
    assert torch.equal(
        run("ties", tensors, int8_mask=True, **kwargs), run("ties", tensors, **kwargs)
    )


# --- sparsification -----------------------------------------------------------------------


def test_magnitude_keeps_k_largest_with_floor_and_min_one():
    x = t(0.5, -3, 2, -1, 4, 0.1, -0.2, 6, 5, -7)
    assert torch.equal(sparsify.magnitude(x, 0.2), t(0, 0, 0, 0, 0, 0, 0, 6, 0, -7))
    # int(0.29 * 10) = 2 (floor); int(0.35 * 10) = 3
    assert torch.equal(sparsify.magnitude(x, 0.29), t(0, 0, 0, 0, 0, 0, 0, 6, 0, -7))
    assert torch.equal(sparsify.magnitude(x, 0.35), t(0, 0, 0, 0, 0, 0, 0, 6, 5, -7))
    # k = max(1, int(0.01 * 10)) = 1
    assert torch.equal(sparsify.magnitude(x, 0.01), t(0, 0, 0, 0, 0, 0, 0, 0, 0, -7))
    assert sparsify.magnitude(x, 1.0) is x
    assert sparsify.magnitude(x, 1.5) is x
    assert torch.equal(sparsify.magnitude(x, 0.0), torch.zeros(10))
    assert torch.equal(sparsify.magnitude(x, -0.5), torch.zeros(10))


def test_magnitude_with_ties_keeps_exactly_k():
    x = t(1, 2, 2, 2, 2, 3, -2, 0)
    for density, k in [(0.25, 2), (0.5, 4), (0.75, 6)]:
        out = sparsify.magnitude(x, density)
        assert int(torch.count_nonzero(out)) == k
        # everything above the threshold is kept, nothing below it
        assert out[5] == 3
        if k < 6:
            assert out[0] == 0
    # ties among equal magnitudes go by position as in a stable ascending sort: the later
    # positions rank higher, so they are kept first
    assert torch.equal(sparsify.magnitude(x, 0.25), t(0, 0, 0, 0, 0, 3, -2, 0))


def _stable_reference(values, lo, hi):
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[torch.sort(values, stable=True).indices[lo:hi]] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    a=st.integers(0, 40),
    b=st.integers(0, 40),
)
def test_rank_range_mask_equals_stable_sort_with_ties(values, a, b):
    v = torch.tensor(values, dtype=torch.float32)
    lo, hi = min(a, b, len(values)), min(max(a, b), len(values))
    mask = sparsify.rank_range_mask(v, lo, hi)
    assert int(mask.sum()) == max(0, hi - lo)
    assert torch.equal(mask, _stable_reference(v, lo, hi))


def test_rank_range_mask_large_tensor_sampled_selection(monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 300_000  # above the sampling threshold
    distinct = torch.randn(n, generator=g).abs()
    tied = torch.randint(0, 50, (n,), generator=g).float()
    cases = [(0, 10), (n // 3, n), (n - 1, n), (5, n - 7), (n // 2, n // 2 + 1000)]
    for values in (distinct, tied):
        order = torch.sort(values, stable=True).indices
        for lo, hi in cases:
            expected = torch.zeros(n, dtype=torch.bool)
            expected[order[lo:hi]] = True
            assert torch.equal(sparsify.rank_range_mask(values, lo, hi), expected)
    # A bracket too narrow to hold the answer must fall back to a full selection.
    monkeypatch.setattr(sparsify, "_SAMPLE_SIGMAS", 0.0)
    for rank in (1, n // 2, n - 2):
        expected = torch.kthvalue(distinct, rank + 1).values
        assert sparsify._value_at_rank(distinct, rank) == expected


def test_rank_range_mask_with_nan_uses_stable_sort():
    v = t(1, float("nan"), 3, 2, float("nan"), 0)
    for lo, hi in [(0, 3), (2, 6), (1, 5)]:
        assert torch.equal(sparsify.rank_range_mask(v, lo, hi), _stable_reference(v, lo, hi))


def test_rescale_preserves_l1_norm_and_skips_tiny_norms():
    x = t(1, -4, 2, -3)
    out = sparsify.magnitude(x, 0.5, rescale=True)
    assert torch.allclose(out.abs().sum(), x.abs().sum())
    assert torch.allclose(out, t(0, -4, 0, -3) * 10 / 7)
    tiny = t(1e-9, -2e-9, 0, 0)
    assert torch.equal(sparsify.magnitude(tiny, 0.25, rescale=True), t(0, -2e-9, 0, 0))


def test_magnitude_outliers_keeps_the_right_ranks():
    magnitudes = torch.randperm(20, generator=torch.Generator().manual_seed(0)).float() + 1
    signs = torch.where(torch.arange(20) % 3 == 0, -1.0, 1.0)
    x = magnitudes * signs
    # N = 20, target 10, top int(0.1 * 20) = 2, bot 8: ascending ranks 8..17 = magnitudes 9..18
    out = sparsify.magnitude_outliers(x, 0.5, gamma=0.1)
    kept = out != 0
    assert torch.equal(kept, (magnitudes >= 9) & (magnitudes <= 18))
    assert torch.equal(out[kept], x[kept])
    # outlier removal shrinks to keep the density: target 18, top 4, bot max(0, -2) = 0
    kept = sparsify.magnitude_outliers(x, 0.9, gamma=0.2) != 0
    assert torch.equal(kept, magnitudes <= 18)
    assert sparsify.magnitude_outliers(x, 1.0, gamma=0.5) is x
    assert torch.equal(sparsify.magnitude_outliers(x, 0.0, gamma=0.1), torch.zeros(20))


def test_breadcrumbs_merges_sparsified_deltas():
    base = torch.zeros(20)
    model = torch.arange(1.0, 21.0)
    out = run("breadcrumbs", [base, model], base_index=0, weight=2.0, density=0.5, gamma=0.1)
    expected = torch.where((model >= 9) & (model <= 18), 2 * model, torch.zeros(20))
    assert torch.equal(out, expected)


def test_breadcrumbs_ties_elects_signs_after_sparsifying():
    base = torch.zeros(10)
    m1 = torch.arange(1.0, 11.0)
    m2 = -torch.arange(1.0, 11.0) * 0.5
    # density 0.8, gamma 0.1: each keeps ascending ranks 1..8 (values 2..9 in magnitude);
    # the elected sign is + wherever m1 kept an entry, so only m1 survives there.
    out = run("breadcrumbs_ties", [base, m1, m2], base_index=0, weight=1.0, density=0.8, gamma=0.1)
    expected = torch.where((m1 >= 2) & (m1 <= 9), m1, torch.zeros(10))
    assert torch.equal(out, expected)


# --- DARE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_randomized_methods_are_reproducible_per_seed(name):
    tensors = [rand(6, 8, seed=s) for s in range(3)]
    kwargs = dict(base_index=0, weight=[0.7, 0.5], density=0.5)
    first = run(name, tensors, seed=11, **kwargs)
    assert torch.equal(first, run(name, tensors, seed=11, **kwargs))
    assert not torch.equal(first, run(name, tensors, seed=12, **kwargs))


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_randomized_methods_require_a_generator(name):
    spec = get_method(name)
    kwargs = {p.name: [p.default] if p.scope == "per_non_base" else p.default for p in spec.params}
    kwargs.update(weight=[1.0], density=[0.5])
    with pytest.raises(ValueError, match="Generator"):
        spec.fn([A, B], base_index=0, generator=None, **kwargs)


@pytest.mark.parametrize(
    ("dare", "plain", "extra"),
    [("dare_linear", "task_arithmetic", {}), ("dare_ties", "ties", {"normalize": False})],
)
def test_dare_density_one_is_plain_task_arithmetic(dare, plain, extra):
    tensors = [rand(4, 5, seed=s) for s in range(4)]
    kwargs = dict(base_index=0, weight=[0.3, 0.9, -0.4], density=1.0, **extra)
    assert torch.equal(run(dare, tensors, seed=3, **kwargs), run(plain, tensors, **kwargs))


def test_dare_keeps_density_fraction_and_rescale_keeps_l1_norm():
    base = torch.zeros(20_000)
    model = rand(20_000, seed=5)
    for density in (0.3, 0.5):
        plain = run(
            "dare_linear", [base, model], base_index=0, weight=1.0, density=density, rescale=False
        )
        kept = plain != 0
        assert abs(kept.float().mean().item() - density) < 0.02
        assert torch.equal(plain[kept], model[kept])
        rescaled = run("dare_linear", [base, model], base_index=0, weight=1.0, density=density)
        assert torch.allclose(rescaled.abs().sum(), model.abs().sum(), rtol=1e-5)
        assert torch.equal(rescaled != 0, kept)  # the same mask for the same seed


def test_dare_rescaled_delta_is_unbiased_on_average():
    base, model = rand(500, seed=1), rand(500, seed=2)
    delta = model - base
    total = torch.zeros(500)
    seeds = 400
    for seed in range(seeds):
        total += (
            run("dare_linear", [base, model], base_index=0, seed=seed, weight=1.0, density=0.5)
            - base
        )
    mean = total / seeds
    # each entry's estimate has std |d| / sqrt(seeds); the average error is far below 10%
    assert (mean - delta).abs().mean() < 0.1 * delta.abs().mean()


def test_della_probabilities_follow_magnitude_rank():
    base = torch.zeros(1, 200)
    model = torch.arange(1.0, 201.0).reshape(1, 200)
    kept = torch.zeros(200)
    for seed in range(100):
        out = run(
            "della_linear",
            [base, model],
            base_index=0,
            seed=seed,
            weight=1.0,
            density=0.5,
            epsilon=0.4,
            rescale=False,
        )
        kept += (out != 0).float()[0]
    # keep probability rises from 0.1 (smallest) to 0.9 (largest)
    assert kept[:40].mean() / 100 < 0.3
    assert kept[-40:].mean() / 100 > 0.7


def test_della_rejects_bad_epsilon_and_unrankable_tensors():
    with pytest.raises(ValueError, match="epsilon"):
        run("della", [A, B], base_index=0, weight=1.0, density=0.5, epsilon=0.5)
    with pytest.raises(ValueError, match="rank"):
        run("della", [t(1.0), t(2.0)], base_index=0, weight=1.0, density=0.5)


# --- model stock --------------------------------------------------------------------------


def test_model_stock_identical_inputs():
    w = rand(3, 4, seed=3)
    assert torch.equal(run("model_stock", [w, w, w], base_index=0), w)
    # identical fine-tunes: cos = 1, t = 1, so the (common) fine-tune itself
    base = rand(3, 4, seed=4)
    for filter_wise in (False, True):
        out = run("model_stock", [base, w, w, w], base_index=0, filter_wise=filter_wise)
        assert torch.allclose(out, w, atol=1e-6)


def test_model_stock_by_hand():
    base = torch.zeros(2)
    # offsets (1, 0) and (0, 1): cos 0, t 0, the base
    assert torch.equal(run("model_stock", [base, t(1, 0), t(0, 1)], base_index=0), base)
    # offsets (2, 0) and (1, sqrt 3): cos 0.5, t = 2 * 0.5 / 1.5 = 2/3; average (1.5, sqrt3/2)
    out = run("model_stock", [base, t(2, 0), t(1, math.sqrt(3))], base_index=0)
    assert torch.allclose(out, t(1.0, math.sqrt(3) / 3), atol=1e-6)
    # opposite offsets: 1 + cos = 0 has no estimate, so the base
    assert torch.equal(run("model_stock", [base, t(1, 1), t(-1, -1)], base_index=0), base)


def test_model_stock_filter_wise_is_row_by_row():
    tensors = [rand(3, 5, seed=s) for s in range(4)]
    whole = run("model_stock", tensors, base_index=0, filter_wise=True)
    for row in range(3):
        alone = run("model_stock", [x[row] for x in tensors], base_index=0)
        assert torch.allclose(whole[row], alone, atol=1e-6)


# --- nuslerp / multislerp -----------------------------------------------------------------


def test_nuslerp_weights_pick_endpoints_and_midpoint():
    a, b = t(1, 0, 0), t(0, 1, 0)
    assert torch.allclose(run("nuslerp", [a, b], weight=[1.0, 0.0]), a, atol=1e-7)
    assert torch.allclose(run("nuslerp", [a, b], weight=[0.0, 2.0]), b, atol=1e-7)
    mid = (a + b) / math.sqrt(2)
    assert torch.allclose(run("nuslerp", [a, b], weight=[3.0, 3.0]), mid, atol=1e-7)
    # weights summing to ~0 mean t = 0.5
    assert torch.allclose(run("nuslerp", [a, b], weight=[1.0, -1.0]), mid, atol=1e-7)


def test_nuslerp_with_base_interpolates_task_vectors():
    base = t(1, 1, 1)
    out = run("nuslerp", [t(2, 1, 1), base, t(1, 2, 1)], base_index=1, weight=[1.0, 1.0])
    assert torch.allclose(out, base + t(1, 1, 0) / math.sqrt(2), atol=1e-6)
    # colinear task vectors: plain lerp
    out = run("nuslerp", [base, t(2, 2, 2), t(3, 3, 3)], base_index=0, weight=[1.0, 3.0])
    assert torch.allclose(out, t(2.75, 2.75, 2.75), atol=1e-6)


def test_nuslerp_row_wise_interpolates_columns():
    a, b = rand(4, 3, seed=1), rand(4, 3, seed=2)
    out = run("nuslerp", [a, b], weight=[1.0, 2.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    for col in range(3):
        alone = run("nuslerp", [a[:, col], b[:, col]], weight=[1.0, 2.0])
        assert torch.allclose(out[:, col], alone, atol=1e-6)
    rows = run("nuslerp", [a, b], weight=[1.0, 2.0], nuslerp_flatten=False)
    for row in range(4):
        alone = run("nuslerp", [a[row], b[row]], weight=[1.0, 2.0])
        assert torch.allclose(rows[row], alone, atol=1e-6)


def test_multislerp_identities():
    a, b = t(1, 0, 0), t(0, 1, 0)
    single = rand(3, 4, seed=0)
    assert run("multislerp", [single], weight=[0.3]) is single
    assert torch.allclose(run("multislerp", [a, b], weight=[1.0, 1.0]), (a + b) / math.sqrt(2))
    w = rand(3, 4, seed=1)
    assert torch.allclose(run("multislerp", [w, w, w], weight=[0.2, 0.3, 0.5]), w, atol=1e-6)
    base = t(1, 1, 1)
    out = run("multislerp", [base, a + base, b + base], base_index=0, weight=[2.0, 2.0])
    assert torch.allclose(out, base + (a + b) / math.sqrt(2))


def test_multislerp_antipodal():
    a = t(1, 2, 3)
    # two antipodal models fall back to linear interpolation
    assert torch.allclose(run("multislerp", [a, -a], weight=[1.0, 1.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="weighted sum"):
        run("multislerp", [a, -a, a, -a], weight=[1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="sum to 0"):
        run("multislerp", [a, 2 * a], weight=[1.0, -1.0])


# --- passthrough --------------------------------------------------------------------------


def test_passthrough_scale():
    assert run("passthrough", [A]) is A
    assert torch.equal(run("passthrough", [A], scale=0.5), A * 0.5)
    with pytest.raises(ValueError, match="exactly one"):
        run("passthrough", [A, B])

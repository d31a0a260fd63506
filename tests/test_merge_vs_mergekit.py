"""End-to-end differential tests: ``mol.merge.run_merge`` against mergekit 0.1.5's ``run_merge``.

The same YAML configuration is merged by both tools from the same tiny random checkpoints
(a Llama family of 4 layers and a GPT-2 family of 3 layers, float32; each a base plus three
fine-tune-like experts) and the outputs are compared file against file: the same tensor names,
shapes and dtypes, values within 1e-5, the same ``config.json`` essentials, and, for a few
methods, the same logits from ``transformers``. Randomised methods (DARE, DELLA) are compared
where they are deterministic (density 1, inputs equal to the base); otherwise their
properties (reproducibility under a seed, the kept fraction) are checked on our output.

mergekit runs offline on local directories (``HF_HUB_OFFLINE=1`` comes from conftest.py) with
tokenizer copying off: the checkpoints have no tokenizer.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("mergekit")

with warnings.catch_warnings():  # mergekit's lazy_unpickle imports numpy.core
    warnings.simplefilter("ignore", DeprecationWarning)
    from mergekit.config import MergeConfiguration as MKMergeConfiguration
    from mergekit.merge import run_merge as mk_run_merge
    from mergekit.options import MergeOptions as MKMergeOptions
from safetensors import safe_open  # noqa: E402

from mol.merge import MergeOptions, load_merge_config, run_merge  # noqa: E402
from tests.merge_fixtures import family, gpt2_config, llama_config  # noqa: E402

TOL = 1e-5
FAMILIES = ("llama", "gpt2")
NUM_LAYERS = {"llama": 4, "gpt2": 3}


# --- configurations ------------------------------------------------------------------------
# Each case is a function of the family's model directories ``m`` ({"base", "e1", "e2", "e3"})
# and its number of layers ``n``, returning the mergekit YAML as a dict.


def _models(m, *entries):
    """``models:`` entries: ``(name, parameters)`` pairs (parameters may be None)."""
    out = []
    for name, params in entries:
        entry = {"model": m[name]}
        if params is not None:
            entry["parameters"] = params
        out.append(entry)
    return out


def _slice(m, ranges, **extra):
    """One output slice: ``{name: (start, end)}`` sources plus extra slice keys."""
    return {
        "sources": [{"model": m[name], "layer_range": list(r)} for name, r in ranges.items()],
        **extra,
    }


def _gta(method, **top):
    """A task-arithmetic-family config over base + e1..e3 with distinct weights."""

    def build(m, n):
        return {
            "merge_method": method,
            "base_model": m["base"],
            "models": _models(
                m,
                ("e1", {"weight": 0.7}),
                ("e2", {"weight": -0.4}),
                ("e3", {"weight": 1.3}),
            ),
            "parameters": dict(top),
            "dtype": "float32",
        }

    return build


CASES = {
    "linear_normalize": lambda m, n: {
        "merge_method": "linear",
        "models": _models(
            m, ("e1", {"weight": 0.3}), ("e2", {"weight": 0.9}), ("e3", {"weight": 0.5})
        ),
        "dtype": "float32",
    },
    "linear_out_dtype_bfloat16": lambda m, n: {
        "merge_method": "linear",
        "models": _models(m, ("e1", {"weight": 0.25}), ("e2", {"weight": 0.75})),
        "dtype": "float32",
        "out_dtype": "bfloat16",
    },
    "linear_no_normalize": lambda m, n: {
        "merge_method": "linear",
        "models": _models(
            m, ("e1", {"weight": 0.3}), ("e2", {"weight": 0.9}), ("e3", {"weight": -0.2})
        ),
        "parameters": {"normalize": False},
    },
    "slerp_t": lambda m, n: {
        "merge_method": "slerp",
        "base_model": m["base"],
        "models": _models(m, ("base", None), ("e1", None)),
        "parameters": {"t": 0.3},
        "dtype": "float32",
    },
    "slerp_t_gradient": lambda m, n: {
        "merge_method": "slerp",
        "base_model": m["e1"],
        "models": _models(m, ("e1", None), ("e2", None)),
        "parameters": {"t": [0, 0.5, 0.3, 0.7, 1]},
    },
    # The classic mergekit slerp recipe: slices, a gradient per filter and a catch-all.
    "slerp_slices_filter_gradient": lambda m, n: {
        "merge_method": "slerp",
        "base_model": m["base"],
        "slices": [_slice(m, {"base": (0, n), "e1": (0, n)})],
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "float32",
    },
    "task_arithmetic_lambda": _gta("task_arithmetic", **{"lambda": 0.6}),
    "task_arithmetic_normalize": _gta("task_arithmetic", normalize=True),
    "ties": _gta("ties", density=0.5, normalize=True),
    "ties_no_normalize": _gta("ties", density=0.3, normalize=False, **{"lambda": 1.5}),
    # ties with per-model density gradients, a filter on mlp, over two slices (the gradient
    # restarts in each slice; with 3 layers the second slice has 2 and the first 1).
    "ties_slices_density_gradient_filter": lambda m, n: {
        "merge_method": "ties",
        "base_model": m["base"],
        "slices": [
            {
                "sources": [
                    {"model": m["base"], "layer_range": [0, n // 2]},
                    {
                        "model": m["e1"],
                        "layer_range": [0, n // 2],
                        "parameters": {
                            "density": [{"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.5}],
                            "weight": 0.8,
                        },
                    },
                    {
                        "model": m["e2"],
                        "layer_range": [0, n // 2],
                        "parameters": {"density": [0.9, 0.4, 0.6], "weight": 0.5},
                    },
                ]
            },
            {
                "sources": [
                    {"model": m["base"], "layer_range": [n // 2, n]},
                    {
                        "model": m["e1"],
                        "layer_range": [n // 2, n],
                        "parameters": {
                            "density": [{"filter": "mlp", "value": [0.7, 0.1]}, {"value": 0.4}],
                            "weight": [{"filter": "mlp", "value": 1.2}, {"value": 0.3}],
                        },
                    },
                    {
                        "model": m["e2"],
                        "layer_range": [n // 2, n],
                        "parameters": {"density": 0.6, "weight": [0.2, 0.9]},
                    },
                ],
                "parameters": {"normalize": False},
            },
        ],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32",
    },
    "ties_models_density_gradient_filter": lambda m, n: {
        "merge_method": "ties",
        "base_model": m["base"],
        "models": _models(
            m,
            ("base", None),
            (
                "e1",
                {
                    "density": [{"filter": "mlp", "value": [0.2, 0.5, 0.9]}, {"value": 0.5}],
                    "weight": [{"filter": "mlp", "value": [1.0, 0.2]}, {"value": 0.6}],
                },
            ),
            ("e2", {"density": [0.8, 0.3], "weight": 0.5}),
            ("e3", {"density": 0.4, "weight": [{"filter": "mlp", "value": 0.0}, {"value": 1}]}),
        ),
        "parameters": {"normalize": True},
    },
    # gamma 0.1, not 0.05: with 0.05 the llama e2 delta of model.norm.weight has two equal
    # magnitudes (entries 22 and 31) at the lower boundary (ranks 5 and 6, bot = 6), where
    # mergekit's unstable argsort and our stable tie-break (_sparsify.py) legitimately differ.
    "breadcrumbs": _gta("breadcrumbs", density=0.8, gamma=0.1),
    "breadcrumbs_ties": _gta("breadcrumbs_ties", density=0.7, gamma=0.1),
    "model_stock": lambda m, n: {
        "merge_method": "model_stock",
        "base_model": m["base"],
        "models": _models(m, ("e1", None), ("e2", None), ("e3", None)),
        "dtype": "float32",
    },
    "model_stock_filter_wise": lambda m, n: {
        "merge_method": "model_stock",
        "base_model": m["base"],
        "models": _models(m, ("e1", None), ("e2", None), ("e3", None)),
        "parameters": {"filter_wise": True},
        "dtype": "float32",
    },
    "nuslerp_base": lambda m, n: {
        "merge_method": "nuslerp",
        "base_model": m["base"],
        "models": _models(m, ("e1", {"weight": 0.3}), ("e2", {"weight": 0.7})),
        "dtype": "float32",
    },
    "nuslerp_no_base": lambda m, n: {
        "merge_method": "nuslerp",
        "models": _models(m, ("e1", {"weight": 1.0}), ("e2", {"weight": 2.0})),
        "dtype": "float32",
    },
    "nuslerp_row_wise": lambda m, n: {
        "merge_method": "nuslerp",
        "models": _models(m, ("e1", {"weight": 0.4}), ("e3", {"weight": 0.6})),
        "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        "dtype": "float32",
    },
    "multislerp_base": lambda m, n: {
        "merge_method": "multislerp",
        "base_model": m["base"],
        "models": _models(
            m, ("e1", {"weight": 0.5}), ("e2", {"weight": 0.2}), ("e3", {"weight": 0.3})
        ),
        "dtype": "float32",
    },
    "multislerp_no_base": lambda m, n: {
        "merge_method": "multislerp",
        "models": _models(
            m, ("e1", {"weight": 1.0}), ("e2", {"weight": 2.0}), ("e3", {"weight": 0.5})
        ),
        "dtype": "float32",
    },
    # A frankenmerge: layers [0, n-1) of e1 then [1, n) of e2 (Llama: [0,3) + [1,4) = 6).
    "passthrough_slices": lambda m, n: {
        "merge_method": "passthrough",
        "slices": [_slice(m, {"e1": (0, n - 1)}), _slice(m, {"e2": (1, n)})],
        "dtype": "float32",
    },
    "passthrough_slices_scale": lambda m, n: {
        "merge_method": "passthrough",
        "slices": [
            _slice(m, {"e1": (0, n)}),
            {
                "sources": [
                    {
                        "model": m["e3"],
                        "layer_range": [n - 2, n],
                        "parameters": {
                            "scale": [{"filter": "mlp", "value": 0.0}, {"value": [0.5, 2.0]}]
                        },
                    }
                ]
            },
        ],
        "dtype": "float32",
    },
    "dare_ties_density_1": _gta("dare_ties", density=1.0),
    "dare_linear_density_1": _gta("dare_linear", density=1.0, normalize=True),
    "della_density_1": _gta("della", density=1.0, epsilon=0.1),
    "della_linear_density_1": _gta("della_linear", density=1.0, epsilon=0.1),
}

# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("mk-families")
    out = {
        "llama": family(root / "llama", llama_config(num_hidden_layers=NUM_LAYERS["llama"]), 3),
        "gpt2": family(root / "gpt2", gpt2_config(n_layer=NUM_LAYERS["gpt2"]), 3),
    }
    # "e0": a model identical to the base (a fine-tune that learned nothing).
    for fam in out.values():
        e0 = Path(fam["base"]).parent / "e0"
        shutil.copytree(fam["base"], e0)
        fam["e0"] = str(e0)
    return out


@pytest.fixture(scope="module")
def merged(families, tmp_path_factory):
    """``merged(fam, case) -> (ours_dir, mergekit_dir)``, each merge run once per module."""
    root = tmp_path_factory.mktemp("mk-merges")
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def run(fam: str, case: str) -> tuple[Path, Path]:
        if (fam, case) not in cache:
            text = yaml.safe_dump(CASES[case](families[fam], NUM_LAYERS[fam]), sort_keys=False)
            ours, theirs = root / f"{fam}-{case}-mol", root / f"{fam}-{case}-mk"
            run_merge(load_merge_config(text), ours, MergeOptions())
            run_mergekit(text, theirs)
            cache[fam, case] = (ours, theirs)
        return cache[fam, case]

    return run


def run_mergekit(text: str, out: Path, **options) -> Path:
    """mergekit's merge of YAML ``text``; its ``random_seed`` reseeds every global RNG, so
    their states are restored afterwards."""
    config = MKMergeConfiguration.model_validate(yaml.safe_load(text))
    opts = MKMergeOptions(copy_tokenizer=False, quiet=True, lazy_unpickle=False, **options)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            mk_run_merge(config, str(out), opts)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return out


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    files = sorted(path.glob("*.safetensors"))
    assert files, f"no safetensors in {path}"
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                assert name not in tensors, f"{name} written twice"
                tensors[name] = f.get_tensor(name)
    return tensors


def assert_same_tensors(ours: dict, theirs: dict, tol: float = TOL) -> None:
    assert sorted(ours) == sorted(theirs), (
        f"only ours: {sorted(set(ours) - set(theirs))}; "
        f"only mergekit's: {sorted(set(theirs) - set(ours))}"
    )
    bad = []
    for name in sorted(theirs):
        a, b = ours[name], theirs[name]
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        # Low-precision outputs: both round the same float32 result, which may differ by
        # 1e-7 and so round to neighbouring values (one unit in the last place apart).
        rtol = 0.0 if a.dtype == torch.float32 else torch.finfo(a.dtype).eps
        diff = (a.double() - b.double()).abs() - rtol * b.double().abs()
        worst = diff.max().item() if a.numel() else 0.0
        if not worst <= tol:
            bad.append(f"{name}: max abs diff {worst:.3g}")
    assert not bad, "tensors differ:\n" + "\n".join(bad)


def hf_config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


# --- tensor-by-tensor agreement ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fam", "case"),
    [pytest.param(fam, case, id=f"{fam}-{case}") for fam in FAMILIES for case in CASES],
)
def test_same_tensors_as_mergekit(merged, fam, case):
    ours, theirs = merged(fam, case)
    assert_same_tensors(load_tensors(ours), load_tensors(theirs))


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("case", ["linear_normalize", "passthrough_slices", "ties"])
def test_same_config_json_as_mergekit(merged, fam, case):
    ours, theirs = merged(fam, case)
    a, b = hf_config(ours), hf_config(theirs)
    for key in ("num_hidden_layers", "vocab_size", "architectures", "model_type", "hidden_size"):
        assert getattr(a, key) == getattr(b, key), key
    if case == "passthrough_slices":
        n = NUM_LAYERS[fam]
        assert a.num_hidden_layers == 2 * (n - 1)


@pytest.mark.parametrize("fam", FAMILIES)
def test_sharded_output_has_the_same_tensors(families, merged, tmp_path, fam):
    """Our shards (a few KB each) hold exactly mergekit's single-file tensors."""
    text = yaml.safe_dump(CASES["ties"](families[fam], NUM_LAYERS[fam]))
    out = tmp_path / "sharded"
    run_merge(load_merge_config(text), out, MergeOptions(out_shard_size=20_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 3
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    assert_same_tensors(load_tensors(out), load_tensors(merged(fam, "ties")[1]))


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize(
    "case", ["ties_slices_density_gradient_filter", "slerp_slices_filter_gradient"]
)
def test_written_yaml_reads_as_the_same_mergekit_config(families, merged, fam, case):
    ours, _ = merged(fam, case)
    original = CASES[case](families[fam], NUM_LAYERS[fam])
    written = yaml.safe_load((ours / "mergekit_config.yml").read_text())
    a = MKMergeConfiguration.model_validate(written)
    b = MKMergeConfiguration.model_validate(original)
    assert a.model_dump() == b.model_dump()


@pytest.mark.parametrize("fam", FAMILIES)
def test_cli_merges_a_yaml_file_like_mergekit(families, merged, tmp_path, fam):
    from click.testing import CliRunner

    from mol.cli.merge import cli

    config = tmp_path / "merge.yml"
    case = "ties_slices_density_gradient_filter"
    config.write_text(yaml.safe_dump(CASES[case](families[fam], NUM_LAYERS[fam])))
    result = CliRunner().invoke(cli, [str(config), str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_tensors(load_tensors(tmp_path / "out"), load_tensors(merged(fam, case)[1]))


@pytest.mark.parametrize("fam", FAMILIES)
def test_frankenmerge_layers_come_from_their_sources(families, merged, fam):
    """Output layers 0..n-2 are e1's layers 0..n-2; then e2's layers 1..n-1, renumbered."""
    n = NUM_LAYERS[fam]
    ours = load_tensors(merged(fam, "passthrough_slices")[0])
    e1 = load_tensors(Path(families[fam]["e1"]))
    e2 = load_tensors(Path(families[fam]["e2"]))
    layer = "model.layers" if fam == "llama" else "transformer.h"
    sources = [(e1, i) for i in range(n - 1)] + [(e2, i) for i in range(1, n)]
    for out_index, (src, src_index) in enumerate(sources):
        prefix = f"{layer}.{src_index}."
        names = [k for k in src if k.startswith(prefix)]
        assert names
        for name in names:
            out_name = f"{layer}.{out_index}.{name[len(prefix) :]}"
            assert torch.equal(ours[out_name], src[name]), out_name
    assert not any(k.startswith(f"{layer}.{len(sources)}.") for k in ours)


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize(
    "case", ["linear_normalize", "ties_slices_density_gradient_filter", "passthrough_slices"]
)
def test_same_logits_as_mergekit(merged, fam, case):
    from transformers import AutoModelForCausalLM

    ours, theirs = merged(fam, case)
    ids = torch.arange(3, 3 + 2 * 11).reshape(2, 11) % 96
    logits = []
    for path in (ours, theirs):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert logits[0].shape == (2, 11, 96)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)


# --- DARE / DELLA: deterministic properties ------------------------------------------------


def _single_expert(method, m, density, **params):
    return {
        "merge_method": method,
        "base_model": m["base"],
        "models": _models(m, ("e1", {"weight": 1.0, "density": density})),
        "parameters": {"rescale": False, **params},
        "dtype": "float32",
    }


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_randomised_merge_is_reproducible_under_a_seed(families, tmp_path, fam, method):
    m = families[fam]
    extra = {"epsilon": 0.1} if method.startswith("della") else {}
    config = load_merge_config(_gta(method, density=0.5, **extra)(m, NUM_LAYERS[fam]))
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_merge(config, tmp_path / name, MergeOptions(random_seed=seed))
        outs[name] = load_tensors(tmp_path / name)
    assert_same_tensors(outs["a"], outs["b"], tol=0.0)
    differing = [k for k in outs["a"] if not torch.equal(outs["a"][k], outs["c"][k])]
    assert len(differing) > len(outs["a"]) // 2  # another seed, other masks


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize(
    ("method", "density", "extra"),
    [
        ("dare_linear", 0.3, {}),
        ("dare_ties", 0.6, {}),
        ("della_linear", 0.5, {"epsilon": 0.2}),
    ],
)
def test_kept_fraction_is_about_density(families, merged, tmp_path, fam, method, density, extra):
    """One expert, weight 1, no rescale: each entry is either the base's or the expert's."""
    m = families[fam]
    config = _single_expert(method, m, density, **extra)
    run_merge(load_merge_config(config), tmp_path / "ours", MergeOptions(random_seed=3))
    run_mergekit(yaml.safe_dump(config), tmp_path / "mk", random_seed=3)
    base, e1 = load_tensors(Path(m["base"])), load_tensors(Path(m["e1"]))
    for out in (load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "mk")):
        assert sorted(out) == sorted(base)
        kept = total = 0
        for name, tensor in out.items():
            is_base = tensor == base[name]
            is_expert = torch.isclose(tensor, e1[name], rtol=0, atol=1e-6)
            assert torch.all(is_base | is_expert), name
            kept += int((is_expert & ~is_base).sum())
            total += int((base[name] != e1[name]).sum())
        assert total > 10_000
        assert abs(kept / total - density) < 0.02, kept / total


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della"])
def test_randomised_merge_of_models_equal_to_base_matches_mergekit(families, tmp_path, fam, method):
    """Task vectors of zero leave nothing to chance: both tools give the base exactly."""
    m = families[fam]
    config = {
        "merge_method": method,
        "base_model": m["base"],
        "models": _models(m, ("e0", {"weight": 0.8, "density": 0.4})),
        "parameters": {"epsilon": 0.1} if method == "della" else {},
        "dtype": "float32",
    }
    text = yaml.safe_dump(config)
    run_merge(load_merge_config(text), tmp_path / "ours", MergeOptions(random_seed=1))
    run_mergekit(text, tmp_path / "mk", random_seed=1)
    ours, theirs = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "mk")
    assert_same_tensors(ours, theirs, tol=0.0)
    assert_same_tensors(ours, load_tensors(Path(m["base"])), tol=0.0)

"""The merge configuration (mergekit's YAML schema) and per-tensor parameter resolution.

Oracles: hand-computed gradient values, mergekit's own pydantic schema (every example is a valid
mergekit config), and mergekit's own resolver and planner (the parameters it computes for every
tensor of tiny models must equal ours). Unit tests run against fake method specs that mirror
mergekit's, so they hold whatever the real methods do; a few use the real registry.
"""

from __future__ import annotations

import importlib.util
import re
import typing

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import mol.merge.methods  # noqa: F401  (register the real methods before any monkeypatching)
from mol._errors import ConfigError
from mol.merge import _params
from mol.merge._params import (
    evaluate_setting,
    gradient_position,
    output_layers,
    resolve_params,
    resolve_value,
    slice_base_model,
    slice_inputs,
)
from mol.merge.config import (
    Conditional,
    InputSliceDefinition,
    MergeConfiguration,
    ModelReference,
    ModelTokenEmbedding,
    ZeroEmbedding,
    load_merge_config,
    parse_model_reference,
)
from mol.merge.methods import _registry
from mol.merge.methods._registry import REQUIRED, MethodSpec, ParamSpec

# --- method specs ------------------------------------------------------------------------------


def _unused(*args, **kwargs):
    raise AssertionError("configuration tests never run a method")


def _spec(name: str, params: list[ParamSpec], **kw) -> MethodSpec:
    return MethodSpec(name=name, fn=_unused, params=tuple(params), **kw)


def _task_arithmetic(name: str, normalize: bool, rescale: bool) -> MethodSpec:
    return _spec(
        name,
        [
            ParamSpec("int8_mask", bool, False),
            ParamSpec("normalize", bool, normalize),
            ParamSpec("rescale", bool, rescale),
            ParamSpec("lambda", float, 1.0),
            ParamSpec("weight", float, REQUIRED, "per_non_base"),
            ParamSpec("density", float, 1.0, "per_non_base"),
        ],
        base="required",
    )


# Mirrors of mergekit 0.1.5's specs (merge_methods/*.py), independent of mol's real methods.
FAKE_METHODS = {
    spec.name: spec
    for spec in (
        _spec(
            "linear",
            [ParamSpec("weight", float, REQUIRED, "per_input"), ParamSpec("normalize", bool, True)],
        ),
        _spec("slerp", [ParamSpec("t", float)], base="required", min_inputs=2, max_inputs=2),
        _spec("passthrough", [ParamSpec("scale", float, None, "per_input")], max_inputs=1),
        _spec("with_int", [ParamSpec("k", int, 3), ParamSpec("flag", bool, False, "per_input")]),
        _task_arithmetic("task_arithmetic", False, False),
        _task_arithmetic("ties", True, False),
        _task_arithmetic("dare_ties", False, True),
    )
}


@pytest.fixture
def fake_methods(monkeypatch):
    """The registry holds only FAKE_METHODS for the duration of a test."""
    monkeypatch.setattr(_registry, "_METHODS", dict(FAKE_METHODS))
    return FAKE_METHODS


@pytest.fixture(params=["fake", "real"])
def any_registry(request, monkeypatch):
    """Run a test against the fake specs, then against mol's real methods (if registered)."""
    if request.param == "fake":
        monkeypatch.setattr(_registry, "_METHODS", dict(FAKE_METHODS))
    return request.param


def _need_real(*names: str) -> None:
    missing = [n for n in names if n not in _registry._METHODS]
    if missing:
        pytest.skip(f"real merge methods not registered yet: {', '.join(missing)}")


# --- example configurations (mergekit's README and common community merges) ----------------------

EXAMPLES = {
    "linear": """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: [0.3, 0.5]
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight:
        - filter: mlp
          value: 0.5
        - value: 0.2
merge_method: linear
parameters:
  normalize: true
dtype: float16
""",
    "slerp": """
slices:
  - sources:
      - model: OpenPipe/mistral-ft-optimized-1218
        layer_range: [0, 32]
      - model: mlabonne/NeuralHermes-2.5-Mistral-7B
        layer_range: [0, 32]
merge_method: slerp
base_model: OpenPipe/mistral-ft-optimized-1218
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
""",
    "ties": """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
""",
    "dare_ties": """
models:
  - model: mistralai/Mistral-7B-v0.1
    # No parameters necessary for base model
  - model: samir-fama/SamirGPT-v1
    parameters:
      density: 0.53
      weight: 0.4
  - model: abacusai/Slerp-CM-mist-dpo
    parameters:
      density: 0.53
      weight: 0.3
  - model: EmbeddedLLM/Mistral-7B-Merge-14-v0.2
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  int8_mask: true
dtype: bfloat16
tokenizer_source: union
""",
    "task_arithmetic": """
base_model: mistralai/Mistral-7B-v0.1@main
models:
  - model: mistralai/Mistral-7B-Instruct-v0.2
    parameters:
      weight: 0.7
  - model: teknium/OpenHermes-2.5-Mistral-7B+some-user/a-lora-adapter
    parameters:
      weight: 0.3
merge_method: task_arithmetic
parameters:
  lambda: 1.2
  normalize: false
dtype: float32
out_dtype: bfloat16
tokenizer:
  source: base
  tokens:
    <|im_start|>:
      source: mistralai/Mistral-7B-Instruct-v0.2
    <|im_end|>:
      source:
        kind: model_token
        model: mistralai/Mistral-7B-Instruct-v0.2
        token: </s>
      force: true
    <|pad|>:
      source:
        kind: zero
  pad_to_multiple_of: 64
chat_template: chatml
""",
    "passthrough": """
slices:
  - sources:
    - model: mistralai/Mistral-7B-Instruct-v0.2
      layer_range: [0, 24]
  - sources:
    - model: mistralai/Mistral-7B-Instruct-v0.2
      layer_range: [8, 32]
      parameters:
        scale:
          - filter: o_proj
            value: 0.5
          - filter: down_proj
            value: 0.5
          - value: 1
merge_method: passthrough
dtype: bfloat16
""",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_loads_and_round_trips(name, any_registry):
    if any_registry == "real":
        _need_real(name)
    config = load_merge_config(EXAMPLES[name])
    assert config.merge_method == name
    text = config.to_yaml()
    assert load_merge_config(text) == config
    # to_dict is plain data: yaml.safe_load of our YAML gives it back exactly.
    assert yaml.safe_load(text) == config.to_dict()


def test_examples_hold_what_the_yaml_says(fake_methods):
    slerp = load_merge_config(EXAMPLES["slerp"])
    assert slerp.slices is not None and slerp.models is None
    assert slerp.slices[0].sources[1].layer_range == (0, 32)
    assert slerp.parameters["t"][0] == Conditional(value=(0, 0.5, 0.3, 0.7, 1), filter="self_attn")
    assert slerp.parameters["t"][2] == Conditional(value=0.5)
    assert slerp.dtype == "bfloat16"

    ties = load_merge_config(EXAMPLES["ties"])
    assert ties.models[0].parameters == {"density": (1, 0.7, 0.1), "weight": 1.0}
    assert ties.base_model == "TheBloke/Llama-2-13B-fp16"
    assert ties.referenced_models()[0] == "TheBloke/Llama-2-13B-fp16"
    assert len(ties.referenced_models()) == 4

    ta = load_merge_config(EXAMPLES["task_arithmetic"])
    assert parse_model_reference(ta.base_model) == ModelReference(
        "mistralai/Mistral-7B-v0.1", "main"
    )
    assert parse_model_reference(ta.models[1].model) == ModelReference(
        "teknium/OpenHermes-2.5-Mistral-7B", None, "some-user/a-lora-adapter", None
    )
    tokens = ta.tokenizer.tokens
    assert ta.tokenizer.source == "base" and ta.tokenizer.pad_to_multiple_of == 64
    assert tokens["<|im_start|>"].source == "mistralai/Mistral-7B-Instruct-v0.2"
    assert tokens["<|im_end|>"].source == ModelTokenEmbedding(
        "mistralai/Mistral-7B-Instruct-v0.2", token="</s>"
    )
    assert tokens["<|im_end|>"].force is True
    assert tokens["<|pad|>"].source == ZeroEmbedding()
    assert (ta.chat_template, ta.out_dtype) == ("chatml", "bfloat16")


def _mergekit():
    return pytest.importorskip("mergekit.config")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_valid_mergekit_configs(name, fake_methods):
    mk = _mergekit()
    theirs = mk.MergeConfiguration.model_validate(yaml.safe_load(EXAMPLES[name]))
    assert theirs.merge_method == name
    ours = load_merge_config(EXAMPLES[name])
    # mergekit reads our YAML back to the same configuration it read from the original...
    assert mk.MergeConfiguration.model_validate(yaml.safe_load(ours.to_yaml())) == theirs
    # ...and we read mergekit's own serialisation back to ours.
    assert load_merge_config(theirs.to_yaml()) == ours


def test_load_from_file_path_and_dict(tmp_path, fake_methods):
    path = tmp_path / "merge.yml"
    path.write_text(EXAMPLES["ties"])
    from_text = load_merge_config(EXAMPLES["ties"])
    assert load_merge_config(path) == from_text
    assert load_merge_config(str(path)) == from_text
    assert load_merge_config(yaml.safe_load(EXAMPLES["ties"])) == from_text
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_merge_config(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_merge_config(str(tmp_path / "missing.yaml"))


def test_programmatic_construction_matches_yaml(fake_methods):
    from mol.merge.config import InputModelDefinition

    built = MergeConfiguration(
        merge_method="linear",
        models=[
            InputModelDefinition("a", {"weight": [0.2, 0.8]}),
            InputModelDefinition("b", {"weight": [{"filter": "mlp", "value": 1}, {"value": 0}]}),
        ],
        dtype="torch.float16",  # mergekit drops the prefix too
    )
    assert built.dtype == "float16"
    assert built.models[0].parameters["weight"] == (0.2, 0.8)
    assert load_merge_config(built.to_yaml()) == built


# --- errors: unknown keys, names and types, each with the path of the key ----------------------

TIES = yaml.safe_load(EXAMPLES["ties"])
SLICES = {
    "merge_method": "ties",
    "base_model": "base",
    "slices": [
        {
            "sources": [
                {"model": "base", "layer_range": [0, 4]},
                {"model": "a", "layer_range": [4, 8], "parameters": {"weight": 0.5}},
            ],
            "parameters": {"density": 0.5},
        }
    ],
}


def _with(base: dict, path: str, value, replaces: str | None = None) -> dict:
    """A deep copy of ``base`` with ``value`` set at a dotted path (``models.1.paramters``),
    the sibling key ``replaces`` (the correct spelling) removed."""
    data = yaml.safe_load(yaml.safe_dump(base))
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if replaces is not None:
        node.pop(replaces, None)
    node[int(last) if last.isdigit() else last] = value
    return data


def _error(source) -> str:
    with pytest.raises(ConfigError) as info:
        load_merge_config(source)
    return str(info.value)


TYPOS = [
    # (base, where to put it, value, key to remove, expected path, expected suggestion)
    (TIES, "paramters", {"normalize": True}, "parameters", "paramters", "parameters"),
    (TIES, "merge_methd", "ties", "merge_method", "merge_methd", "merge_method"),
    (TIES, "dtpye", "float16", "dtype", "dtpye", "dtype"),
    (TIES, "models.1.paramters", {"weight": 1}, "parameters", "models[1].paramters", "parameters"),
    (TIES, "models.1.mdoel", "x", "model", "models[1].mdoel", "model"),
    (SLICES, "slices.0.paramters", {}, "parameters", "slices[0].paramters", "parameters"),
    (SLICES, "slices.0.source", [], "sources", "slices[0].source", "sources"),
    (
        SLICES,
        "slices.0.sources.1.layer_rnge",
        [4, 8],
        "layer_range",
        "slices[0].sources[1].layer_rnge",
        "layer_range",
    ),
    (
        TIES,
        "models.2.parameters.weight.0.fitler",
        "mlp",
        "filter",
        "models[2].parameters.weight[0].fitler",
        "filter",
    ),
    (
        TIES,
        "tokenizer",
        {"source": "union", "pad_to_multiple": 8},
        None,
        "tokenizer.pad_to_multiple",
        "pad_to_multiple_of",
    ),
]


@pytest.mark.parametrize(("base", "where", "value", "remove", "path", "hint"), TYPOS)
def test_unknown_key_names_its_path_and_the_closest_key(
    base, where, value, remove, path, hint, fake_methods
):
    message = _error(_with(base, where, value, replaces=remove))
    assert message.startswith(path + ":"), message
    assert f"(did you mean '{hint}'?)" in message


def test_unknown_key_in_a_token_setting(fake_methods):
    data = _with(TIES, "tokenizer", {"tokens": {"<|im_end|>": {"source": "x", "forc": True}}})
    message = _error(data)
    assert message.startswith("tokenizer.tokens.<|im_end|>.forc:")
    assert "(did you mean 'force'?)" in message


PARAM_TYPOS = [
    (TIES, "models.0.parameters.densty", 0.5, "models[0].parameters.densty", "density"),
    (TIES, "parameters.normalise", True, "parameters.normalise", "normalize"),
    (TIES, "parameters.int8mask", True, "parameters.int8mask", "int8_mask"),
    (SLICES, "slices.0.parameters.wieght", 1.0, "slices[0].parameters.wieght", "weight"),
    (
        SLICES,
        "slices.0.sources.1.parameters.desnity",
        1.0,
        "slices[0].sources[1].parameters.desnity",
        "density",
    ),
]


@pytest.mark.parametrize(("base", "where", "value", "path", "hint"), PARAM_TYPOS)
def test_unknown_parameter_names_its_path_and_the_closest_parameter(
    base, where, value, path, hint, any_registry
):
    if any_registry == "real":
        _need_real("ties")
    message = _error(_with(base, where, value))
    assert message.startswith(path + ":"), message
    assert f"(did you mean '{hint}'?)" in message


def test_typo_in_yaml_text_names_path(fake_methods):
    text = EXAMPLES["ties"].replace("      density: 0.5\n", "      densty: 0.5\n")
    message = _error(text)
    assert message.startswith("models[1].parameters.densty:")
    assert "(did you mean 'density'?)" in message


def test_unknown_merge_method_is_the_registry_error(fake_methods):
    message = _error(_with(TIES, "merge_method", "teis"))
    assert "unknown merge_method 'teis'" in message and "(did you mean 'ties'?)" in message


@pytest.mark.parametrize(
    ("where", "value", "path"),
    [
        ("models.0.parameters.density", "high", "models[0].parameters.density"),
        ("models.1.parameters.weight", [0, "x", 1], "models[1].parameters.weight[1]"),
        ("models.2.parameters.weight.0.value", "half", "models[2].parameters.weight[0].value"),
        ("parameters.normalize", "maybe", "parameters.normalize"),
        ("parameters.int8_mask", 2, "parameters.int8_mask"),
    ],
)
def test_wrong_value_type_names_its_path(where, value, path, fake_methods):
    message = _error(_with(TIES, where, value))
    assert message.startswith(path + ":"), message
    assert repr(value if not isinstance(value, list) else value[1]) in message


def test_values_convert_like_mergekit(fake_methods):
    """PyYAML reads 1e-3 as a string and mergekit (pydantic, lax) converts it: so do we."""
    config = load_merge_config(
        EXAMPLES["ties"]
        .replace("density: 0.33", "density: 1e-3")
        .replace("int8_mask: true", "int8_mask: 'yes'")
    )
    assert config.models[2].parameters["density"] == "1e-3"  # kept as written
    spec = FAKE_METHODS["ties"]
    params = resolve_params(
        config,
        spec,
        tensor_name="model.norm.weight",
        input_models=slice_inputs(config),
        layer_index=None,
        num_layers=40,
    )
    assert params["density"][2] == 0.001
    assert params["int8_mask"] is True


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_with(TIES, "slices", SLICES["slices"]), "give exactly one of 'models', 'slices'"),
        ({"merge_method": "ties", "base_model": "b"}, "give exactly one of"),
        (_with(TIES, "models", []), "give exactly one of"),
        (_with(TIES, "dtype", "fp16"), "dtype: 'fp16' is not a supported dtype"),
        (_with(TIES, "out_dtype", "float64"), "out_dtype: 'float64' is not a supported dtype"),
        (
            _with(SLICES, "slices.0.sources.1.layer_range", [8, 4]),
            "slices[0].sources[1].layer_range: [8, 4] is empty",
        ),
        (
            _with(SLICES, "slices.0.sources.1.layer_range", [4, 4]),
            "slices[0].sources[1].layer_range: [4, 4] is empty",
        ),
        (
            _with(SLICES, "slices.0.sources.1.layer_range", [4, "8"]),
            "slices[0].sources[1].layer_range: expected [start, end]",
        ),
        (
            _with(SLICES, "slices.0.sources.1.layer_range", [4, 9]),
            "slices[0].sources[1].layer_range: [4, 9] has 5 layers but sources[0] has 4",
        ),
        (_with(SLICES, "slices.0.sources", []), "slices[0].sources: expected a non-empty list"),
        (
            _with(SLICES, "slices.0.sources.1.model", "base"),
            "slices[0].sources[1].model: 'base' is already sources[0]",
        ),
        (_with(TIES, "models.2.model", "garage-bAInd/Platypus2-13B"), "models[2].model:"),
        (_with(TIES, "models.0.model", "a+b+c"), "models[0].model: model reference 'a+b+c'"),
        (_with(TIES, "models.0.model", "a@b@c"), "models[0].model: model 'a@b@c' has more than"),
        (_with(TIES, "models.0.model", 2024), "models[0].model: expected a model name"),
        (_with(TIES, "models.1.parameters.weight", None), "models[1].parameters.weight: expected"),
        (
            _with(TIES, "models.1.parameters.weight", [0.5, {"value": 1}]),
            "models[1].parameters.weight[1]: a list is either a gradient",
        ),
        (
            _with(TIES, "models.1.parameters.weight", [{"filter": "mlp"}]),
            "weight[0].value: required",
        ),
        (
            _with(_with(TIES, "tokenizer_source", "base"), "tokenizer", {"source": "union"}),
            "tokenizer_source: give either",
        ),
        (_with(TIES, "tokenizer", {"pad_to_multiple_of": 0}), "tokenizer.pad_to_multiple_of:"),
        (
            _with(TIES, "tokenizer", {"tokens": {"x": {"source": {"kind": "model"}}}}),
            "tokenizer.tokens.x.source.kind: expected 'model_token' or 'zero'",
        ),
        ("merge_method: ties\nmerge_method: linear\nmodels: []\n", "merge_method: key repeated"),
        ("merge_method: [ties", "invalid YAML"),
        ("- a\n- b\n", "expected a YAML mapping"),
    ],
)
def test_invalid_configurations(data, expected, fake_methods):
    assert expected in _error(data)


def test_base_model_required_by_the_method(fake_methods):
    data = yaml.safe_load(EXAMPLES["ties"])
    del data["base_model"]
    message = _error(data)
    assert message.startswith("base_model: merge method 'ties' requires a base_model")


def test_slice_base_model_must_be_a_source(fake_methods):
    message = _error(_with(SLICES, "slices.0.base_model", "elsewhere"))
    assert message.startswith("slices[0].base_model: base model 'elsewhere' is not a source")
    # a slice's own base_model overrides the top-level one
    own_base = _with(_with(SLICES, "slices.0.base_model", "a"), "parameters", {"weight": 1})
    config = load_merge_config(own_base)
    assert (slice_base_model(config), config.base_model) == ("a", "base")


def test_slerp_needs_exactly_two_inputs_per_method_spec(any_registry):
    if any_registry == "real":
        _need_real("slerp")
    three = yaml.safe_load(EXAMPLES["slerp"])
    three["slices"][0]["sources"].append({"model": "third", "layer_range": [0, 32]})
    message = _error(three)
    assert message.startswith("slices[0]: merge method 'slerp' takes exactly 2 inputs")
    # models: form, base not listed: mergekit appends it, so one listed model makes two inputs
    two = {"merge_method": "slerp", "base_model": "b", "models": [{"model": "a"}]}
    assert load_merge_config(_with(two, "parameters", {"t": 0.5})).merge_method == "slerp"
    one = _with({"merge_method": "slerp", "models": [{"model": "a"}]}, "base_model", "a")
    assert "takes exactly 2 inputs" in _error(_with(one, "parameters", {"t": 0.5}))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {
                "merge_method": "linear",
                "models": [{"model": "a", "parameters": {"weight": 1}}, {"model": "b"}],
            },
            "models[1].parameters.weight: merge method 'linear' requires 'weight' for 'b'",
        ),
        (
            {
                "merge_method": "slerp",
                "base_model": "a",
                "models": [{"model": "a"}, {"model": "b"}],
            },
            "parameters.t: merge method 'slerp' requires parameter 't'",
        ),
        (
            {
                "merge_method": "linear",
                "base_model": "c",
                "models": [
                    {"model": "a", "parameters": {"weight": 1}},
                    {"model": "b", "parameters": {"weight": 1}},
                ],
            },
            "base_model: 'c' is not listed under models, so it is merged as one more input",
        ),
        (
            {
                "merge_method": "ties",
                "base_model": "a",
                "models": [{"model": "a"}, {"model": "b", "parameters": {"weight": []}}],
            },
            "models[1].parameters.weight: merge method 'ties' requires 'weight' for 'b'",
        ),
    ],
)
def test_missing_required_parameter(data, expected, fake_methods):
    assert _error(data).startswith(expected)


def test_required_parameter_can_come_from_any_level(fake_methods):
    base = {"merge_method": "linear", "models": [{"model": "a"}, {"model": "b"}]}
    assert load_merge_config(_with(base, "parameters", {"weight": 1.0}))
    # the base is not a non-base input: ties needs no weight for it
    assert load_merge_config(
        {
            "merge_method": "ties",
            "base_model": "a",
            "models": [{"model": "a"}, {"model": "b", "parameters": {"weight": 1}}],
        }
    )


def test_global_parameter_given_per_model_is_rejected(fake_methods):
    """mergekit never reads a global parameter (slerp's t) from a model entry: it is lost."""
    data = yaml.safe_load(EXAMPLES["slerp"])
    data["slices"][0]["sources"][1]["parameters"] = {"t": 0.3}
    message = _error(data)
    assert message.startswith("slices[0].sources[1].parameters.t: 't' is a global parameter")
    ties = _with(TIES, "models.0.parameters.normalize", False)
    assert _error(ties).startswith("models[0].parameters.normalize: 'normalize' is a global")


def test_per_input_parameter_at_global_level_is_a_default(fake_methods):
    config = load_merge_config(
        {
            "merge_method": "linear",
            "models": [{"model": "a", "parameters": {"weight": 3}}, {"model": "b"}],
            "parameters": {"weight": 1},
        }
    )
    params = resolve_params(
        config, FAKE_METHODS["linear"], tensor_name="x", input_models=["a", "b"]
    )
    assert params == {"weight": [3.0, 1.0], "normalize": True}


def test_model_reference_parsing():
    assert parse_model_reference("org/model") == ModelReference("org/model")
    assert parse_model_reference("org/model@v1.0+lora@abc") == ModelReference(
        "org/model", "v1.0", "lora", "abc"
    )
    assert str(parse_model_reference("org/model@v1.0+lora@abc")) == "org/model@v1.0+lora@abc"
    for bad in ("", "a+b+c", "a@b@c", "@rev", "a@", "a+"):
        with pytest.raises(ConfigError):
            parse_model_reference(bad)


def test_dict_form_model_reference(fake_methods):
    data = _with(
        TIES, "models.0.model", {"model": {"path": "org/m", "revision": "r1"}, "lora": "l"}
    )
    assert load_merge_config(data).models[0].model == "org/m@r1+l"
    bad = _with(TIES, "models.0.model", {"model": "org/m", "override_architecture": "X"})
    assert _error(bad).startswith("models[0].model.override_architecture: not supported")


def test_input_slice_definition_validates_in_python():
    with pytest.raises(ConfigError, match=r"^layer_range: \[3, 1\] is empty"):
        InputSliceDefinition("m", (3, 1))
    with pytest.raises(ConfigError, match=r"^layer_range: \[-1, 1\] is empty or negative"):
        InputSliceDefinition("m", (-1, 1))
    assert InputSliceDefinition("m", [2, 5]).layer_range == (2, 5)


# --- gradients and filters: hand-computed oracles --------------------------------------------

GRADIENT = [0, 0.5, 0.3, 0.7, 1]


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (0, 0.0),  # t = 0: first point
        (8, 15.3 / 31),  # t = 8/31, scaled = 32/31: 0.5 + (0.3 - 0.5) * (1/31)
        (16, 10.1 / 31),  # scaled = 64/31: 0.3 + (0.7 - 0.3) * (2/31)
        (24, 22.6 / 31),  # scaled = 96/31: 0.7 + (1 - 0.7) * (3/31)
        (31, 1.0),  # t = 1: last point
        (None, 0.0),  # embeddings, final norm, lm_head: t = 0
    ],
)
def test_five_point_gradient_over_32_layers(layer, expected):
    value = resolve_value(GRADIENT, tensor_name="model.layers.x", layer_index=layer, num_layers=32)
    assert value == pytest.approx(expected, abs=1e-12)


def test_gradient_position_rules():
    assert [gradient_position(i, 5) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1]
    assert gradient_position(0, 1) == 1.0  # a one-layer slice reads the last point
    assert gradient_position(None, 32) == 0.0
    with pytest.raises(ValueError):
        gradient_position(5, 5)
    one_layer = resolve_value([0.2, 0.9], tensor_name="x", layer_index=0, num_layers=1)
    assert one_layer == 0.9


def test_gradient_of_bools_and_ints():
    # bools do not interpolate: entry int(t * (k - 1)) is taken
    bools = [True, False, True]
    picks = [evaluate_setting(bools, tensor_name="x", t=t, type_=bool) for t in (0, 0.49, 0.5, 1)]
    assert picks == [True, True, False, True]
    assert evaluate_setting([2, 4], tensor_name="x", t=0.5, type_=int) == 3
    with pytest.raises(ValueError):
        evaluate_setting([2, 3], tensor_name="x", t=0.5, type_=int)  # 2.5 is not an int
    assert evaluate_setting(["1e-3", 1], tensor_name="x", t=0, type_=float) == 0.001


FILTERS = [
    {"filter": "self_attn", "value": 0.1},
    {"filter": "mlp", "value": [0, 1]},
    {"value": 0.5},
]


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        ("model.layers.3.self_attn.q_proj.weight", 0.1),
        ("model.layers.3.mlp.down_proj.weight", 0.75),  # gradient inside the filter: t = 3/4
        ("model.layers.3.input_layernorm.weight", 0.5),  # default entry
        ("model.embed_tokens.weight", 0.5),
    ],
)
def test_filters(tensor, expected):
    assert resolve_value(FILTERS, tensor_name=tensor, layer_index=3, num_layers=5) == expected


def test_filter_matching_is_substring_first_match_wins():
    def value(setting, name):
        return evaluate_setting(setting, tensor_name=name, t=0)

    ordered = [{"filter": "proj", "value": 1}, {"filter": "q_proj", "value": 2}]
    assert value(ordered, "model.layers.0.self_attn.q_proj.weight") == 1
    # plain substring: "layers.1." would be needed to avoid matching layer 12
    assert value([{"filter": "layers.1", "value": 1}], "model.layers.12.mlp.up_proj.weight") == 1
    assert value([{"filter": "*", "value": 7}], "anything") == 7
    assert value([{"filter": "mlp", "value": 1}], "model.norm.weight") is None  # no default
    assert value({"filter": "norm", "value": 4}, "model.norm.weight") == 4  # a single entry
    assert value([], "x") is None


# --- precedence and per-input lists ------------------------------------------------------------


def _ties_slices() -> MergeConfiguration:
    return load_merge_config(
        {
            "merge_method": "ties",
            "base_model": "base",
            "parameters": {"density": 0.9, "weight": 0.1, "lambda": 2},
            "slices": [
                {
                    "sources": [
                        {"model": "base", "layer_range": [0, 2], "parameters": {"weight": 9}},
                        {"model": "a", "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                        {
                            "model": "b",
                            "layer_range": [2, 4],
                            "parameters": {"density": [{"filter": "layers.3.mlp", "value": 0.2}]},
                        },
                    ],
                    "parameters": {"density": 0.7},
                },
                {
                    "sources": [
                        {"model": "base", "layer_range": [2, 5]},
                        {"model": "a", "layer_range": [2, 5]},
                        {"model": "b", "layer_range": [0, 3]},
                    ],
                },
            ],
        }
    )


def test_precedence_model_then_slice_then_global_then_default(fake_methods):
    config = _ties_slices()
    spec = FAKE_METHODS["ties"]
    inputs = slice_inputs(config, slice_index=0)
    assert inputs == ("base", "a", "b")
    out = "model.layers.1.mlp.up_proj.weight"
    params = resolve_params(
        config,
        spec,
        tensor_name=out,
        input_models=inputs,
        input_tensor_names=[out, out, "model.layers.3.mlp.up_proj.weight"],
        layer_index=1,
        num_layers=2,
        slice_index=0,
    )
    # weight: per-model for a; global for b; the base's own weight 9 is never read
    assert params["weight"] == [0.5, 0.1]
    # density: b's filter matches its own tensor name (source layer 3), not the output's (1)
    assert params["density"] == [0.7, 0.2]
    assert (params["lambda"], params["normalize"], params["int8_mask"]) == (2.0, True, False)

    # the filter list of b has no default: for other tensors it falls through to the slice level
    attn = "model.layers.1.self_attn.q_proj.weight"
    params = resolve_params(config, spec, tensor_name=attn, input_models=inputs, t=1.0)
    assert params["density"] == [0.7, 0.7]

    # second slice: no slice parameters, so the global ones
    params = resolve_params(
        config, spec, tensor_name=attn, input_models=inputs, t=0.0, slice_index=1
    )
    assert params["density"] == [0.9, 0.9] and params["weight"] == [0.1, 0.1]


def test_base_index_overrides_and_missing_required_at_resolve_time(fake_methods):
    config = load_merge_config(
        {
            "merge_method": "ties",
            "base_model": "base",
            "models": [
                {"model": "base"},
                {"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 1}]}},
            ],
        }
    )
    spec = FAKE_METHODS["ties"]
    ok = resolve_params(config, spec, tensor_name="l.0.mlp.w", input_models=["base", "a"])
    assert ok["weight"] == [1.0]
    # planner-style call: explicit base position
    ok = resolve_params(
        config, spec, tensor_name="l.0.mlp.w", input_models=["a", "base"], base_index=1, t=0.0
    )
    assert ok["weight"] == [1.0]
    with pytest.raises(ConfigError, match=r"missing required parameter 'weight' for a: l\.0\.attn"):
        resolve_params(config, spec, tensor_name="l.0.attn.w", input_models=["base", "a"])


def test_per_input_lists_and_defaults(fake_methods):
    config = load_merge_config(EXAMPLES["ties"])
    inputs = slice_inputs(config)
    assert inputs[-1] == "TheBloke/Llama-2-13B-fp16"  # base appended, as mergekit does
    params = resolve_params(
        config,
        FAKE_METHODS["ties"],
        tensor_name="model.layers.20.mlp.up_proj.weight",
        input_models=inputs,
        layer_index=20,
        num_layers=40,
    )
    t = 20 / 39
    density0 = evaluate_setting([1, 0.7, 0.1], tensor_name="", t=t)
    weight1 = evaluate_setting([0, 0.3, 0.7, 1], tensor_name="", t=t)
    assert params["density"] == [density0, 0.5, 0.33]
    assert params["weight"] == [1.0, weight1, 0.5]
    assert params["rescale"] is False


def test_passthrough_default_none(fake_methods):
    config = load_merge_config(EXAMPLES["passthrough"])
    spec = FAKE_METHODS["passthrough"]
    first = resolve_params(
        config,
        spec,
        tensor_name="model.layers.0.mlp.down_proj.weight",
        input_models=slice_inputs(config),
        layer_index=0,
        num_layers=24,
    )
    assert first == {"scale": [None]}
    second = resolve_params(
        config,
        spec,
        tensor_name="model.layers.30.mlp.down_proj.weight",
        input_models=slice_inputs(config, slice_index=1),
        layer_index=6,
        num_layers=24,
        slice_index=1,
    )
    assert second == {"scale": [0.5]}


# --- slices: output layer -> source layers ------------------------------------------------------


def test_output_layers_of_a_frankenmerge(fake_methods):
    config = load_merge_config(EXAMPLES["passthrough"])
    layers = output_layers(config)
    assert len(layers) == 48
    layer = layers[30]
    assert (layer.slice_index, layer.index_in_slice, layer.slice_length) == (1, 6, 24)
    assert layer.sources == (_params.LayerSource("mistralai/Mistral-7B-Instruct-v0.2", 14),)
    assert layer.t == 6 / 23
    assert layers[23].t == 1.0 and layers[24].t == 0.0  # each slice restarts the gradient
    assert [ly.index for ly in layers] == list(range(48))


def test_output_layers_of_the_models_form(fake_methods):
    config = load_merge_config(EXAMPLES["ties"])
    with pytest.raises(ValueError, match="num_layers"):
        output_layers(config)
    layers = output_layers(config, num_layers=40)
    assert len(layers) == 40
    assert [s.model for s in layers[7].sources] == list(slice_inputs(config))
    assert {s.layer_index for s in layers[7].sources} == {7}
    assert layers[7].t == 7 / 39


# --- differential tests against mergekit -------------------------------------------------------

_names = st.sampled_from(
    [
        "model.layers.3.self_attn.q_proj.weight",
        "model.layers.12.mlp.up_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "",
    ]
)
_floats = st.floats(min_value=-4, max_value=4, allow_nan=False) | st.integers(-4, 4)
_gradients = st.lists(_floats, min_size=1, max_size=7)
_filters = st.sampled_from([None, "*", "self_attn", "mlp", "layers.1", "norm", "q_proj"])
_conditionals = st.lists(
    st.fixed_dictionaries({"filter": _filters, "value": _floats | _gradients}), max_size=4
)
_layer = st.integers(1, 40).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n)))


@settings(max_examples=300, deadline=None)
@given(setting=_floats | _gradients | _conditionals, name=_names, layer=_layer)
def test_evaluate_setting_equals_mergekits(setting, name, layer):
    mk = _mergekit()
    from mergekit.merge_methods.base import ParameterScope, ParameterSpec

    layer_index, num_layers = layer
    t = gradient_position(layer_index, num_layers)
    theirs_setting = setting
    if isinstance(setting, list) and setting and isinstance(setting[0], dict):
        theirs_setting = [mk.ConditionalParameter(**c) for c in setting]
    validate = ParameterSpec("x", float, ParameterScope.SHARED).validate
    theirs = mk.evaluate_setting(name, theirs_setting, t, validate=validate)
    ours = resolve_value(setting, tensor_name=name, layer_index=layer_index, num_layers=num_layers)
    assert ours == theirs  # exact: same float operations


@settings(max_examples=100, deadline=None)
@given(
    setting=st.lists(st.booleans() | st.sampled_from(["yes", "off", 0, 1]), min_size=1, max_size=5)
    | st.lists(st.integers(-3, 3), min_size=1, max_size=5),
    t=st.sampled_from([0.0, 0.2, 1 / 3, 0.5, 0.75, 1.0]),
    type_=st.sampled_from([bool, int, float]),
)
def test_typed_gradients_equal_mergekits(setting, t, type_):
    mk = _mergekit()
    from mergekit.merge_methods.base import ParameterScope, ParameterSpec

    validate = ParameterSpec("x", type_, ParameterScope.SHARED).validate
    try:
        theirs = mk.evaluate_setting("", setting, t, validate=validate)
    except Exception:
        with pytest.raises(ValueError):
            evaluate_setting(setting, tensor_name="", t=t, type_=type_)
        return
    ours = evaluate_setting(setting, tensor_name="", t=t, type_=type_)
    assert ours == theirs and type(ours) is type(theirs)


# The end-to-end differential: mergekit's planner (plan.py) computes the parameters of every
# tensor of tiny 6-layer Llama models; ours must be identical, tensor by tensor.

_SCOPES = {"shared": "global", "input": "per_input", "non_base": "per_non_base"}


def _spec_from_mergekit(spec) -> MethodSpec:
    """mergekit's MergeMethodSpec as a mol MethodSpec (so validation uses its definitions)."""
    params = []
    for p in spec.parameters:
        type_ = p.value_type
        args = [a for a in typing.get_args(type_) if a is not type(None)]
        type_ = args[0] if args else type_
        default = REQUIRED if p.required else p.default
        params.append(ParamSpec(p.name, type_, default, _SCOPES[p.scope.value]))
    c = spec.contract
    return MethodSpec(
        name=spec.name,
        fn=_unused,
        params=tuple(params),
        base=c.base.value,
        min_inputs=c.min_inputs,
        max_inputs=c.max_inputs,
        min_non_base=c.min_non_base,
        max_non_base=c.max_non_base,
    )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Three 6-layer Llama checkpoints holding just config.json and a one-tensor header."""
    pytest.importorskip("mergekit.plan")
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("mk-models")
    paths = {}
    for name in ("base", "a", "b"):
        path = root / name
        LlamaConfig(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=6,
            num_attention_heads=2,
            vocab_size=16,
            architectures=["LlamaForCausalLM"],
        ).save_pretrained(path)
        save_file({"lm_head.weight": torch.zeros(1)}, str(path / "model.safetensors"))
        paths[name] = str(path)
    return paths


DIFFERENTIAL = {
    "ties_gradients_and_filters": """
models:
  - model: {a}
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: {b}
    parameters:
      density: 0.5
      weight:
        - filter: mlp
          value: [0, 0.3, 0.7, 1]
        - filter: self_attn.q_proj
          value: 0.25
merge_method: ties
base_model: {base}
parameters:
  weight: 0.1
  normalize: false
  int8_mask: true
""",
    "slerp_slices": """
slices:
  - sources:
      - model: {base}
        layer_range: [0, 6]
      - model: {a}
        layer_range: [0, 6]
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
""",
    "linear_base_appended": """
models:
  - model: {a}
    parameters:
      weight: [1, 3]
  - model: {b}
    parameters:
      weight:
        - filter: norm
          value: 2
merge_method: linear
base_model: {base}
parameters:
  weight: 0.5
  normalize: false
""",
    "passthrough_frankenmerge": """
slices:
  - sources:
      - model: {a}
        layer_range: [0, 4]
  - sources:
      - model: {b}
        layer_range: [2, 6]
        parameters:
          scale:
            - filter: layers.2.
              value: 0.25
            - filter: o_proj
              value: [0.5, 1]
  - sources:
      - model: {a}
        layer_range: [5, 6]
        parameters:
          scale: [0.1, 0.9]
merge_method: passthrough
""",
    "task_arithmetic_slices_with_slice_base": """
slices:
  - sources:
      - model: {base}
        layer_range: [0, 3]
      - model: {a}
        layer_range: [0, 3]
        parameters:
          weight: [0.2, 0.8]
      - model: {b}
        layer_range: [3, 6]
    parameters:
      weight: 0.6
      lambda: [1, 2]
  - sources:
      - model: {base}
        layer_range: [3, 6]
      - model: {a}
        layer_range: [3, 6]
      - model: {b}
        layer_range: [0, 3]
    base_model: {a}
merge_method: task_arithmetic
base_model: {base}
parameters:
  weight: 0.3
  lambda:
    - filter: embed
      value: 3
    - value: [0.5, 1.5]
""",
}


def _mergekit_plan(text: str):
    """Run mergekit's planner (no tensors are read) and return its (weight, task) pairs."""
    from mergekit.architecture import arch_info_for_config
    from mergekit.config import MergeConfiguration as MkConfig
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    mk = MkConfig.model_validate(yaml.safe_load(text))
    model_config = mk.referenced_models()[0].config()
    num_out = len(output_layers(load_merge_config(text), num_layers=6))
    model_config.num_hidden_layers = num_out
    planner = MergePlanner(mk, arch_info_for_config(model_config), MergeOptions(), model_config)
    planner._plan()
    return planner._tensors


@pytest.mark.parametrize("name", sorted(DIFFERENTIAL))
@pytest.mark.parametrize("specs", ["mergekit", "mol"])
def test_parameters_equal_mergekits_planner_for_every_tensor(name, specs, tiny_models, monkeypatch):
    from mergekit.merge_methods.registry import registered_methods

    text = DIFFERENTIAL[name].format(**tiny_models)
    method = yaml.safe_load(text)["merge_method"]
    mk_methods = {m.spec.name: m.spec for m in registered_methods()}
    if specs == "mergekit":
        monkeypatch.setattr(
            _registry, "_METHODS", {n: _spec_from_mergekit(s) for n, s in mk_methods.items()}
        )
    else:
        _need_real(method)
    config = load_merge_config(text)
    spec = config.method
    assert {p.name for p in spec.params} == {p.name for p in mk_methods[method].parameters}

    layers = output_layers(config, num_layers=6)
    layer_re = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
    tasks = _mergekit_plan(text)
    assert len(tasks) == 3 + 9 * len(layers)  # embeddings, 9 per layer, final norm, lm_head
    for weight, task in tasks:
        out_name = weight.name
        match = layer_re.match(out_name)
        if match:
            layer = layers[int(match.group(1))]
            position = {"layer_index": layer.index_in_slice, "num_layers": layer.slice_length}
            slice_index = layer.slice_index
            input_names = [f"model.layers.{s.layer_index}.{match.group(2)}" for s in layer.sources]
        else:
            position = {"layer_index": None, "num_layers": 6}
            slice_index = 0 if "embed" in out_name else -1
            input_names = None
        inputs = slice_inputs(config, slice_index=slice_index)
        theirs_models = [str(m) for m in task.model_order]
        assert list(inputs) == theirs_models, out_name
        theirs_names = [w.name for w in task.gather_tensors.weight_info.values()]
        assert (input_names or [out_name] * len(inputs)) == theirs_names, out_name
        ours = resolve_params(
            config,
            spec,
            tensor_name=out_name,
            input_models=inputs,
            input_tensor_names=input_names,
            slice_index=slice_index,
            **position,
        )
        base = str(task.base_model) if task.base_model is not None else None
        per_model = {str(m): dict(v.items()) for m, v in task.input_parameters.items()}
        for p in spec.params:
            if p.scope == "global":
                theirs = task.parameters[p.name]
            else:
                theirs = [
                    per_model[m][p.name]
                    for m in theirs_models
                    if p.scope == "per_input" or m != base
                ]
            assert ours[p.name] == theirs, (out_name, p.name)


def test_differential_configs_exercise_gradients_filters_and_slices(tiny_models):
    """Guard against the differential test passing vacuously (all-constant parameters)."""
    text = DIFFERENTIAL["passthrough_frankenmerge"].format(**tiny_models)
    values = {
        (w.name, str(m)): v["scale"]
        for w, task in _mergekit_plan(text)
        for m, v in task.input_parameters.items()
    }
    assert len(set(values.values())) >= 4
    # output layer 4 is source layer 2 of b: the filter sees the source name
    assert values[("model.layers.4.mlp.up_proj.weight", tiny_models["b"])] == 0.25
    # the one-layer third slice reads the last gradient point
    assert values[("model.layers.8.mlp.up_proj.weight", tiny_models["a"])] == 0.9


MODULES = """
modules:
  text_decoder:
    models:
      - model: a
        parameters:
          weight: 2
      - model: b
    parameters:
      weight: 0.5
  vision_tower:
    slices:
      - sources:
          - model: a
            layer_range: [0, 2]
merge_method: linear
parameters:
  weight: 1
  normalize: false
"""


def test_modules_form_round_trips_and_uses_module_parameters(fake_methods):
    config = load_merge_config(MODULES)
    assert load_merge_config(config.to_yaml()) == config
    assert config.referenced_models() == ["a", "b"]
    spec = FAKE_METHODS["linear"]
    text = resolve_params(
        config, spec, tensor_name="x", input_models=["a", "b"], module="text_decoder"
    )
    assert text == {"weight": [2.0, 0.5], "normalize": False}  # model > module > global
    vision = resolve_params(
        config, spec, tensor_name="x", input_models=["a"], module="vision_tower"
    )
    assert vision == {"weight": [1.0], "normalize": False}
    assert len(output_layers(config, module="vision_tower")) == 2
    with pytest.raises(ConfigError, match="modules: name one of"):
        slice_inputs(config)
    typo = MODULES.replace(
        "      - model: b\n", "      - model: b\n        parameters:\n          wieght: 1\n"
    )
    message = _error(typo)
    assert message.startswith("modules.text_decoder.models[1].parameters.wieght:")
    assert "(did you mean 'weight'?)" in message
    if importlib.util.find_spec("mergekit") is not None:
        from mergekit.config import MergeConfiguration as MkConfig

        assert set(MkConfig.model_validate(yaml.safe_load(MODULES)).modules) == set(config.modules)

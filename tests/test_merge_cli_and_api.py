"""`mol-merge` and the seed Python API, as the seed README shows them."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from mol._errors import ConfigError
from mol.cli.merge import cli
from mol.io import LazyCheckpoint

from .merge_fixtures import family, llama_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return family(tmp_path_factory.mktemp("m"), llama_config(num_hidden_layers=2), n_experts=2)


def _weights(path):
    with LazyCheckpoint(path) as ckpt:
        return {k: ckpt.get_tensor(k) for k in ckpt.keys()}


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def _write(tmp_path, raw, name="config.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw) if isinstance(raw, dict) else raw)
    return path


def test_cli_merges_a_yaml_into_out(models, tmp_path):
    cfg = _write(
        tmp_path,
        {
            "merge_method": "linear",
            "models": [
                {"model": models["e1"], "parameters": {"weight": 1.0}},
                {"model": models["e2"], "parameters": {"weight": 0.0}},
            ],
        },
    )
    code, out = _invoke(cfg, tmp_path / "out", "--quiet", "--out-shard-size", "10KB")
    assert code == 0, out
    assert "merged" in out and str(tmp_path / "out") in out
    got, want = _weights(tmp_path / "out"), _weights(models["e1"])
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    # existing output: refused without --overwrite, non-zero exit, one line
    code, out = _invoke(cfg, tmp_path / "out", "--quiet")
    assert code == 1 and "not empty" in out and "Traceback" not in out
    code, out = _invoke(cfg, tmp_path / "out", "--quiet", "--overwrite")
    assert code == 0, out


def test_cli_typo_is_an_error_naming_the_key_and_nothing_is_written(models, tmp_path):
    cfg = _write(
        tmp_path,
        f"""
merge_method: ties
base_model: {models["base"]}
models:
  - model: {models["e1"]}
    paramters:
      weight: 1.0
""",
    )
    code, out = _invoke(cfg, tmp_path / "out")
    assert code == 1
    assert "paramters" in out and "did you mean 'parameters'" in out
    assert not (tmp_path / "out").exists()
    cfg = _write(
        tmp_path,
        {
            "merge_method": "ties",
            "base_model": models["base"],
            "models": [{"model": models["e1"], "parameters": {"weight": 1.0, "densty": 0.5}}],
        },
    )
    code, out = _invoke("validate", cfg)
    assert code == 1 and "densty" in out and "did you mean 'density'" in out


def test_cli_validate_accepts_a_good_config(models, tmp_path):
    cfg = _write(
        tmp_path,
        {
            "merge_method": "slerp",
            "base_model": models["e1"],
            "models": [{"model": models["e1"]}, {"model": models["e2"]}],
            "parameters": {"t": 0.3},
        },
    )
    code, out = _invoke("validate", cfg)
    assert code == 0, out
    assert "valid (slerp" in out


def test_cli_examples_are_valid_and_run(micro_zoo, tmp_path):
    code, out = _invoke("examples", tmp_path / "ex", "--size", "micro", "--quiet")
    assert code == 0, out
    files = sorted((tmp_path / "ex").glob("*_example.yml"))
    from mol.merge import list_methods

    assert {f.name.removesuffix("_example.yml") for f in files} == {m.name for m in list_methods()}
    for name in ("linear", "ties", "passthrough"):
        code, out = _invoke(tmp_path / "ex" / f"{name}_example.yml", tmp_path / name, "--quiet")
        assert code == 0, out
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(tmp_path / name)


def test_seed_api_slerp_as_written(models, tmp_path):
    from mol import MergeConfig, SlerpMerge

    config = MergeConfig(
        method="slerp",
        models=[models["e1"], models["e2"]],
        parameters={"t": 0.0},
        output_path=str(tmp_path / "merged"),
    )
    slerp = SlerpMerge(config)
    loaded = slerp.load_models()
    assert set(loaded) == {models["e1"], models["e2"]}
    merged = slerp.merge(loaded)
    path = slerp.save_merged_model(merged)
    want = _weights(models["e1"])  # t = 0 is the base, which defaults to the first model
    got = _weights(path)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(merged.state_dict[k], want[k], rtol=0, atol=1e-6)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(models["e1"])(ids).logits
    torch.testing.assert_close(merged.to_hf_model()(ids).logits, ref, rtol=0, atol=1e-5)


def test_seed_api_ties_and_linear_weights(models, tmp_path):
    from mol import LinearMerge, MergeConfig, TiesMerge

    ties = TiesMerge(
        MergeConfig(
            method="ties",
            base_model=models["base"],
            models=[models["e1"]],
            parameters={"density": 1.0, "normalize": True},
        )
    )
    got, want = ties.merge().state_dict, _weights(models["e1"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    lin = LinearMerge(
        MergeConfig(
            method="linear", models=[models["e1"], models["e2"]], parameters={"weights": [3, 1]}
        )
    )
    a, b, got = _weights(models["e1"]), _weights(models["e2"]), lin.merge().state_dict
    k = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(got[k], (3 * a[k] + b[k]) / 4, rtol=0, atol=1e-6)


def test_seed_api_errors(models):
    from mol import LinearMerge, MergeConfig

    with pytest.raises(ConfigError, match="LinearMerge runs method 'linear'"):
        LinearMerge(MergeConfig(method="slerp", models=[models["e1"], models["e2"]]))
    with pytest.raises(ConfigError, match="weights has 1 values for 2 models"):
        LinearMerge(
            MergeConfig(
                method="linear", models=[models["e1"], models["e2"]], parameters={"weights": [1.0]}
            )
        )
    with pytest.raises(ConfigError, match="no output_path"):
        lin = LinearMerge(MergeConfig(method="linear", models=[models["e1"]]))
        lin.save_merged_model(lin.merge())


def test_seed_import_paths_are_the_same_objects():
    import mol
    from mol.config import MergeConfig as A
    from mol.merge_methods.base_merge import MergeConfig as B

    assert A is B is mol.MergeConfig

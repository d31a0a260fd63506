"""``mol gate train`` and ``mol moe infer``: the gating-network MoE from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mol._errors import ConfigError
from mol.cli._common import fail_cleanly, quiet_option, setup_output

__all__ = ["gate", "moe"]


def _read_json(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"config {path} is not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return values


def _given(**flags) -> dict:
    """The flags the user set (click gives None for the others)."""
    return {k: v for k, v in flags.items() if v is not None}


@click.group()
def gate() -> None:
    """Train the gating network that routes prompts to experts."""


@gate.command("train")
@click.option("--base_model", help="Model whose pooled hidden states are the features.")
@click.option("--output_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON file of GateTrainConfig keys; flags given on the command line win.",
)
@click.option("--hidden_dims", help='Hidden widths, comma-separated (default "512,256").')
@click.option("--dropout", type=float, help="Dropout (default 0.1).")
@click.option("--learning_rate", type=float, help="AdamW learning rate (default 1e-4).")
@click.option("--batch_size", type=int, help="Batch size (default 32).")
@click.option("--num_epochs", type=int, help="Epochs (default 10).")
@click.option("--weight_decay", type=float, help="Weight decay (default 0.01).")
@click.option("--train_split", type=float, help="Train fraction (default 0.7).")
@click.option("--val_split", type=float, help="Validation fraction (default 0.15).")
@click.option("--test_split", type=float, help="Test fraction, held out (default 0.15).")
@click.option("--seed", type=int, help="Random seed (default 42).")
@click.option(
    "--feature_layer", type=int, help="0 = input embeddings (default), L = output of block L."
)
@click.option("--max_length", type=int, help="Tokens per example (default 256).")
@click.option("--zoo_size", help="Zoo size whose corpus a domain name reads (default demo).")
@click.option(
    "--max_examples_per_source", type=int, help="Cap on examples per source (default: all)."
)
@click.option(
    "--data",
    "data",
    multiple=True,
    help="One text source per expert, in expert order: a text file (one example per line), "
    "JSONL with a 'text' field, or a zoo domain (code, prose). `--data a b` or `--data a --data b`.",
)
@click.argument("more_data", nargs=-1)
@click.option("--no_cache", is_flag=True, help="Recompute features instead of using the cache.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@quiet_option
@fail_cleanly
def gate_train(config_path, output_dir, data, more_data, no_cache, overwrite, quiet, **flags):
    """Train a gating network on one text source per expert; write it to OUTPUT_DIR."""
    from mol.moe.gating.train import GateTrainConfig, parse_hidden_dims, train_gating_network

    setup_output(quiet)
    values = _read_json(config_path)
    for key in ("output_dir",):
        if key in values:
            raise ConfigError(f"config key {key!r} is a command-line option only")
    given = _given(**flags)
    if "hidden_dims" in given:
        given["hidden_dims"] = parse_hidden_dims(given["hidden_dims"])
    sources = list(data) + list(more_data)
    if more_data and not data:
        raise ConfigError("text sources go after --data (e.g. --data code prose)")
    if sources:
        given["data"] = sources
    if no_cache:
        given["cache_features"] = False
    values.update(given)
    if "base_model" not in values:
        raise ConfigError("--base_model is required (or 'base_model' in --config)")
    if "data" not in values:
        raise ConfigError("--data is required: one text source per expert")
    config = GateTrainConfig.from_dict(values)
    info = train_gating_network(config, output_dir, overwrite=overwrite)
    test = info["test"]
    click.echo(
        f"best epoch {info['best_epoch']}/{config.num_epochs}; test accuracy "
        f"{test['accuracy']:.4f}, f1 {test['f1']:.4f}, precision {test['precision']:.4f}, "
        f"recall {test['recall']:.4f} -> {output_dir}"
    )


@click.group()
def moe() -> None:
    """Run the gating-network MoE."""


@moe.command("infer")
@click.option("--saved_model_path", type=click.Path(), help="Directory of a saved MoE model.")
@click.option("--model1_path", help="First expert (class 0 of the gate).")
@click.option("--model2_path", help="Second expert (class 1 of the gate).")
@click.option("--gating_model_path", type=click.Path(), help="Directory of a trained gate.")
@click.option("--base_model_path", help="The gate's feature model (default: from training).")
@click.option("--routing_mode", type=click.Choice(["weighted_sum", "select_one"]))
@click.option("--prompt", required=True)
@click.option("--max_new_tokens", type=int, help="Tokens to generate (default 50).")
@click.option("--temperature", type=float, help="Sampling temperature (default 0.7).")
@click.option("--top_p", type=float, help="Nucleus sampling mass (default 0.9).")
@click.option("--no_sample", is_flag=True, help="Greedy decoding.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON file with these options' names as keys; command-line flags win.",
)
@click.option("--device", help="e.g. cuda, cpu (default cpu).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@quiet_option
@fail_cleanly
def moe_infer(prompt, no_sample, config_path, as_json, quiet, **flags):
    """Generate from PROMPT with a saved MoE or one built from its parts."""
    from mol.moe.gating.inference import InferConfig, MoEInference

    setup_output(quiet)
    values = _read_json(config_path)
    values.update(_given(**flags))
    if no_sample:
        values["do_sample"] = False
    cfg = InferConfig.from_dict(values)
    if cfg.saved_model_path is None and not (
        cfg.expert_paths or (cfg.model1_path and cfg.model2_path)
    ):
        raise ConfigError(
            "give --saved_model_path, or --model1_path, --model2_path and --gating_model_path"
        )
    if cfg.saved_model_path is None and cfg.gating_model_path is None:
        raise ConfigError("--gating_model_path is required with --model1_path/--model2_path")
    runner = MoEInference(
        saved_model_path=cfg.saved_model_path,
        model1_path=cfg.model1_path,
        model2_path=cfg.model2_path,
        gating_model_path=cfg.gating_model_path,
        expert_paths=cfg.expert_paths,
        base_model_path=cfg.base_model_path,
        routing_mode=cfg.routing_mode,
        device=cfg.device,
    )
    result = runner.generate(
        prompt,
        max_new_tokens=cfg.max_new_tokens if cfg.max_new_tokens is not None else 50,
        temperature=cfg.temperature if cfg.temperature is not None else 0.7,
        top_p=cfg.top_p if cfg.top_p is not None else 0.9,
        do_sample=cfg.do_sample if cfg.do_sample is not None else True,
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(result["text"])
    for name, prob in result["gating_probs"].items():
        click.echo(f"{name}: {prob:.4f}")

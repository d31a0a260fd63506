"""``mol``: the umbrella command (demo, zoo, inspect, train, eval, gate, moe)."""

from __future__ import annotations

import json

import click

from mol.cli._common import fail_cleanly, quiet_option, setup_output
from mol.cli.eval import eval_group
from mol.cli.moe import gate, moe
from mol.zoo import ZOO_SIZES

_sizes = click.Choice(list(ZOO_SIZES))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Mango: fuse, assemble and merge transformer language models."""


@cli.command()
@click.option("--size", type=_sizes, default="demo", show_default=True, help="Zoo size.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="mol-demo",
    show_default=True,
    help="Where results.json / results.md, merges, MoEs and routing plots go.",
)
@quiet_option
@fail_cleanly
def demo(size: str, out: str, quiet: bool) -> None:
    """Build (or reuse) the zoo; merge, fuse and mix its experts; print held-out perplexity."""
    from mol.demo import format_table, run_demo

    setup_output(quiet)
    zoo, rows = run_demo(size, out)
    click.echo(f"zoo: {zoo.root}")
    click.echo(format_table(rows))
    click.echo(f"results: {out}/results.json, {out}/results.md")


@cli.group()
def zoo() -> None:
    """The small models built from Python's own text."""


@zoo.command("build")
@click.option("--size", type=_sizes, default="demo", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if a matching cache exists.")
@quiet_option
@fail_cleanly
def zoo_build(size: str, force: bool, quiet: bool) -> None:
    """Build the zoo into the cache (MOL_CACHE or ~/.cache/mol), or reuse it."""
    from mol.zoo import build_zoo

    setup_output(quiet)
    built = build_zoo(size, force=force)
    click.echo(f"{size} zoo ready at {built.root} (built in {built.manifest['build_seconds']} s)")


@zoo.command("list")
@click.option("--size", type=_sizes, default="demo", show_default=True)
@fail_cleanly
def zoo_list(size: str) -> None:
    """Show the zoo's models, their paths and held-out perplexities."""
    from mol.zoo import DOMAINS, load_zoo, zoo_dir

    setup_output(quiet=True)
    built = load_zoo(size)
    if built is None:
        raise click.ClickException(
            f"the {size} zoo is not built at {zoo_dir(size)}; run: mol zoo build --size {size}"
        )
    click.echo(f"| model | arch | {' | '.join(f'{d} ppl' for d in DOMAINS)} | path |")
    click.echo("|---|---|" + "---|" * len(DOMAINS) + "---|")
    for name in built.model_names:
        ppl = " | ".join(f"{built.perplexity(name, d):.2f}" for d in DOMAINS)
        click.echo(
            f"| {name} | {built.manifest['models'][name]['arch']} | {ppl} | {built.path(name)} |"
        )


@cli.command()
@click.argument("model")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--json", "as_json", is_flag=True, help="Print the ArchitectureInfo as JSON.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code.")
@fail_cleanly
def inspect(model: str, revision: str | None, as_json: bool, trust_remote_code: bool) -> None:
    """Detect MODEL's architecture (hub id or local path) from its config.json alone."""
    from mol.arch import detect_architecture

    setup_output(quiet=True)
    info = detect_architecture(model, revision=revision, trust_remote_code=trust_remote_code)
    data = info.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(map(len, data))
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {value}")


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    help="A checkpoint-<step> directory to continue from.",
)
@click.option("--output-dir", default=None, help="Overrides training.output_dir.")
@quiet_option
@fail_cleanly
def train(config: str, resume: str | None, output_dir: str | None, quiet: bool) -> None:
    """Build the runtime CONFIG describes and train its adapters and routers."""
    from mol.training import MoLTrainer
    from mol.training.recipe import build_runtime, load_recipe

    setup_output(quiet)
    recipe = load_recipe(config)
    if output_dir is not None:
        recipe.training.output_dir = output_dir
    runtime = build_runtime(recipe)
    result = MoLTrainer(runtime, recipe.training).train(
        recipe.train_data, recipe.eval_data, resume_from=resume
    )
    click.echo(f"trained {result.steps} steps; final loss {result.loss_history[-1]:.4f}")
    if result.eval_history:
        last = result.eval_history[-1]
        click.echo(f"eval loss {last['loss']:.4f} (perplexity {last['perplexity']:.2f})")
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    click.echo(f"final checkpoint: {result.final_checkpoint}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mol")


cli.add_command(eval_group, "eval")
cli.add_command(gate, "gate")
cli.add_command(moe, "moe")

if __name__ == "__main__":
    main()

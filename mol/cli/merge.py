"""``mol-merge``: mergekit-style merges from YAML (``mol-merge CONFIG OUT``), plus helpers.

Subcommands: ``examples DIR`` (one runnable YAML per method, on the zoo's models),
``validate CONFIG`` (exit 0, or the problems and exit 1), ``moe CONFIG OUT`` (dense experts
into one Mixtral / Qwen-MoE checkpoint), and the default: run a merge.
"""

from __future__ import annotations

import click

from mol.cli._common import fail_cleanly, quiet_option, setup_output

_SIZE_SUFFIXES = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
}


def parse_size(text: str) -> int:
    """``"5GB"`` / ``"500M"`` / ``"1073741824"`` -> bytes. Raises click.BadParameter."""
    raw = text.strip().upper()
    number = raw.rstrip("KMGIB")
    suffix = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value <= 0 or suffix not in _SIZE_SUFFIXES:
        raise click.BadParameter(f"{text!r} is not a size like 5GB, 500MB or 1073741824")
    return int(value * _SIZE_SUFFIXES[suffix])


class _RunByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, is a config for ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


_out_shard_size = click.option(
    "--out-shard-size",
    default="5GB",
    show_default=True,
    callback=lambda c, p, v: parse_size(v),
    help="Largest output shard.",
)
_overwrite = click.option(
    "--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty."
)
_allow_pickle = click.option(
    "--allow-pickle", is_flag=True, help="Read trusted .bin (pickle) checkpoints."
)


@click.group(cls=_RunByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Merge models from a mergekit-compatible YAML: mol-merge CONFIG OUT [options]."""


@cli.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", default=None, help="Compute dtype (overrides the YAML's dtype).")
@_out_shard_size
@_overwrite
@click.option("--trust-remote-code", is_flag=True, help="Allow the models' own Python code.")
@_allow_pickle
@click.option("--verbose", "-v", is_flag=True, help="Log every tensor.")
@quiet_option
@fail_cleanly
def run(
    config: str,
    out: str,
    device: str,
    dtype: str | None,
    out_shard_size: int,
    overwrite: bool,
    trust_remote_code: bool,
    allow_pickle: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Merge the models CONFIG describes into the directory OUT."""
    from mol.merge import MergeOptions, load_merge_config, run_merge

    setup_output(quiet, verbose)
    options = MergeOptions(
        device=device,
        dtype=dtype,
        out_shard_size=out_shard_size,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    result = run_merge(load_merge_config(config), out, options)
    click.echo(
        f"merged {result.num_tensors} tensors ({result.num_bytes / 1e6:.1f} MB) "
        f"into {result.path} in {result.seconds:.1f} s"
    )


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--trust-remote-code", is_flag=True)
@click.option("--allow-pickle", is_flag=True)
def validate(config: str, trust_remote_code: bool, allow_pickle: bool) -> None:
    """Check CONFIG and the models it names without merging anything."""
    from mol._errors import MolError
    from mol.merge import MergeOptions, load_merge_config, plan_merge

    setup_output(quiet=True)
    try:
        plan = plan_merge(
            load_merge_config(config),
            MergeOptions(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        )
    except MolError as err:
        click.echo(f"{config}: invalid", err=True)
        click.echo(f"  - {err}", err=True)
        raise SystemExit(1) from err
    click.echo(
        f"{config}: valid ({plan.method.name}, {len(plan.tasks)} output tensors, "
        f"{len(plan.models)} models)"
    )


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--size",
    type=click.Choice(["demo", "micro"]),
    default="demo",
    show_default=True,
    help="Which zoo the examples use (built if missing).",
)
@quiet_option
@fail_cleanly
def examples(directory: str, size: str, quiet: bool) -> None:
    """Write one runnable example YAML per merge method into DIRECTORY."""
    from mol.merge.examples import write_examples

    setup_output(quiet)
    for path in write_examples(directory, size=size):
        click.echo(str(path))


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--device", default="cpu", show_default=True, help="Where hidden-state gate prompts run."
)
@_out_shard_size
@_overwrite
@_allow_pickle
@quiet_option
@fail_cleanly
def moe(
    config: str,
    out: str,
    device: str,
    out_shard_size: int,
    overwrite: bool,
    allow_pickle: bool,
    quiet: bool,
) -> None:
    """Assemble the dense experts CONFIG names into one MoE checkpoint in OUT."""
    from mol.moe.assembly import build_moe, load_moe_config

    setup_output(quiet)
    result = build_moe(
        load_moe_config(config),
        out,
        overwrite=overwrite,
        device=device,
        max_shard_bytes=out_shard_size,
        allow_pickle=allow_pickle,
    )
    click.echo(
        f"assembled a {result.architecture} MoE with {result.num_experts} experts "
        f"({result.num_tensors} tensors, {result.num_bytes / 1e6:.1f} MB) into {result.path} "
        f"in {result.seconds:.1f} s"
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mol-merge")


if __name__ == "__main__":
    main()

"""``mol eval routing`` and ``mol eval perplexity``: score models on the zoo's held-out text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mol._errors import ConfigError, ModelNotFoundError
from mol.cli._common import fail_cleanly, quiet_option, setup_output
from mol.zoo import DOMAINS, ZOO_SIZES

__all__ = ["eval_group"]

logger = logging.getLogger("mol")
_sizes = click.Choice(list(ZOO_SIZES))


@click.group("eval")
def eval_group() -> None:
    """Evaluate models on the zoo's held-out code and prose."""


def _parse_own(value: str) -> dict[str, int]:
    """``"code=0,prose=1"`` -> ``{"code": 0, "prose": 1}``."""
    own: dict[str, int] = {}
    for part in value.split(","):
        domain, sep, index = part.strip().partition("=")
        domain = domain.strip()
        if not sep or not index.strip().isdigit():
            raise ConfigError(f"--own {value!r}: expected DOMAIN=INDEX pairs, e.g. code=0,prose=1")
        if domain not in DOMAINS:
            raise ConfigError(f"--own: unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")
        if domain in own:
            raise ConfigError(f"--own: domain {domain!r} given twice")
        own[domain] = int(index)
    missing = [d for d in DOMAINS if d not in own]
    if missing:
        raise ConfigError(f"--own {value!r}: no expert for {', '.join(missing)}")
    return own


def _infer_own(labels: list[str]) -> dict[str, int]:
    """Each domain's expert: the one whose label names the domain (``expert-code``)."""
    own = {}
    for domain in DOMAINS:
        matches = [j for j, label in enumerate(labels) if domain in label]
        if len(matches) != 1:
            raise ConfigError(
                f"cannot tell which expert owns {domain!r} from the expert labels {labels}; "
                "pass --own, e.g. --own code=0,prose=1"
            )
        own[domain] = matches[0]
    return own


def _check_checkpoint(path: str) -> None:
    from mol.eval import is_mol_checkpoint

    if not Path(path).is_dir():
        raise ConfigError(f"{path}: no such checkpoint directory")
    if not is_mol_checkpoint(path):
        raise ConfigError(f"{path}: not a MoL checkpoint (no mol_config.json)")


def _check_tokenizer(name: str, tokenizer, zoo) -> None:
    """Refuse a model whose tokenizer is not the zoo's: its perplexity would not compare."""
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast.from_pretrained(zoo.tokenizer_path)
    if tokenizer.get_vocab() != reference.get_vocab():
        raise ConfigError(
            f"{name}: its tokenizer is not the zoo's ({zoo.tokenizer_path}); the held-out "
            "blocks would mean other text to it"
        )


@eval_group.command("routing")
@click.argument("checkpoint", type=click.Path())
@click.option("--size", type=_sizes, default="demo", show_default=True, help="Zoo size.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="mol-routing",
    show_default=True,
    help="Where routing.json, routing.png and routing_tokens.html go.",
)
@click.option(
    "--text",
    "text_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Sample text to colour token by token (default: held-out code, then prose).",
)
@click.option(
    "--own",
    default=None,
    help="Each domain's own expert index, e.g. code=0,prose=1 (default: from expert names).",
)
@click.option("--max-blocks", type=click.IntRange(min=1), default=None, help="Blocks per domain.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@quiet_option
@fail_cleanly
def routing(
    checkpoint: str,
    size: str,
    out: str,
    text_file: str | None,
    own: str | None,
    max_blocks: int | None,
    batch_size: int,
    quiet: bool,
) -> None:
    """Routing of the MoL CHECKPOINT on the zoo's held-out blocks, per layer and domain."""
    from mol.eval.report import write_routing_report
    from mol.eval.routing import expert_labels
    from mol.fusion import MoLRuntime
    from mol.zoo import build_zoo

    setup_output(quiet)
    _check_checkpoint(checkpoint)
    if text_file is not None and not Path(text_file).is_file():
        raise ConfigError(f"--text {text_file}: no such file")
    runtime = MoLRuntime.load_checkpoint(checkpoint)
    labels = expert_labels(runtime)
    own_expert = _parse_own(own) if own is not None else _infer_own(labels)
    zoo = build_zoo(size)
    tokenizer = runtime.tokenizer
    _check_tokenizer(checkpoint, tokenizer, zoo)
    text = None
    if text_file is not None:
        text = Path(text_file).read_text(encoding="utf-8")
    out_dir = Path(out)
    report = write_routing_report(
        runtime,
        zoo,
        out_dir,
        own_expert,
        text=text,
        batch_size=batch_size,
        max_blocks=max_blocks,
        title=f"Token routing of {Path(checkpoint).name}",
        extra={"checkpoint": str(Path(checkpoint).absolute()), "zoo": size},
    )

    click.echo(f"| domain | own expert | accuracy | {' | '.join(labels)} | entropy |")
    click.echo("|---|---|---|" + "---|" * len(labels) + "---|")
    for d in report.domains:
        mean = report.mean_weights[d].mean(dim=0)
        click.echo(
            f"| {d} | {labels[own_expert[d]]} | {report.accuracy(d):.3f} | "
            + " | ".join(f"{float(w):.3f}" for w in mean)
            + f" | {float(report.entropy[d].mean()):.3f} |"
        )
    click.echo(f"wrote {out_dir}/routing.json, routing.png, routing_tokens.html")


@eval_group.command("perplexity")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--size", type=_sizes, default="demo", show_default=True, help="Zoo size.")
@click.option("--max-blocks", type=click.IntRange(min=1), default=None, help="Blocks per domain.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a markdown table.")
@quiet_option
@fail_cleanly
def perplexity_command(
    models: tuple[str, ...],
    size: str,
    max_blocks: int | None,
    batch_size: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Held-out perplexity per domain of each MODEL (HF directory, merge, MoE export or MoL
    checkpoint), all on the same zoo tokenisation."""
    from mol.eval import evaluate_perplexity, is_mol_checkpoint, load_for_eval
    from mol.io import load_tokenizer
    from mol.zoo import build_zoo

    setup_output(quiet)
    for path in models:
        if not Path(path).is_dir():
            raise ConfigError(f"{path}: no such model directory")
    zoo = build_zoo(size)
    blocks = {d: zoo.held_out_blocks(d) for d in DOMAINS}
    rows = []
    for path in models:
        model = load_for_eval(path)
        try:
            tokenizer = model.tokenizer if is_mol_checkpoint(path) else load_tokenizer(path)
        except ModelNotFoundError:  # merges and test models often ship no tokenizer
            logger.warning("%s has no tokenizer: only checking that its vocabulary fits", path)
        else:
            _check_tokenizer(path, tokenizer, zoo)
        ppl = evaluate_perplexity(
            model, blocks, batch_size=batch_size, max_blocks=max_blocks, name=path
        )
        rows.append({"name": Path(path).name, "path": str(Path(path).absolute()), "ppl": ppl})
        del model
    if as_json:
        click.echo(json.dumps({"zoo": size, "rows": rows}, indent=2))
        return
    click.echo(f"| model | {' | '.join(DOMAINS)} |")
    click.echo("|---|" + "---|" * len(DOMAINS))
    for row in rows:
        click.echo(
            f"| {row['name']} | " + " | ".join(f"{row['ppl'][d]:.3f}" for d in DOMAINS) + " |"
        )

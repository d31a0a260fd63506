"""What every command shares: logging, quiet mode, and turning Mango's errors into exit codes."""

from __future__ import annotations

import functools
import logging
import sys

import click

from mol._errors import MolError
from mol._progress import set_quiet


def setup_output(quiet: bool, verbose: bool = False) -> None:
    """Route the ``mol`` logger to stderr and silence progress bars (ours and transformers')."""
    import transformers

    set_quiet(quiet)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("mol")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    transformers.utils.logging.set_verbosity_error()
    if quiet:
        transformers.utils.logging.disable_progress_bar()


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs.")


def fail_cleanly(func):
    """Show Mango's own errors as one line on stderr with exit code 1 (bugs keep tracebacks)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (MolError, FileExistsError) as err:
            raise click.ClickException(str(err)) from err

    return wrapper

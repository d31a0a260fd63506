"""Progress bars shared by every long step; silenced by ``--quiet``, ``MOL_QUIET=1`` or in tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet_override: bool | None = None


def set_quiet(quiet: bool | None) -> None:
    """Force progress bars off (True), on (False), or back to the environment's choice (None)."""
    global _quiet_override
    _quiet_override = quiet


def is_quiet() -> bool:
    """True when progress output is suppressed."""
    if _quiet_override is not None:
        return _quiet_override
    return os.environ.get("MOL_QUIET", "").lower() in {"1", "true", "yes"}


def progress(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | float | None = None,
    unit: str = "it",
    **kwargs,
) -> tqdm:
    """A tqdm bar (disabled when quiet). Usable as an iterator or with ``.update(n)``.

    When stderr is not a terminal (CI logs, pipes) the bar redraws at most every 15 seconds
    instead of on every step, so logs stay readable.
    """
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 15.0)
    return tqdm(
        iterable, desc=desc, total=total, unit=unit, disable=is_quiet(), leave=False, **kwargs
    )


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Temporarily silence (or un-silence) progress bars."""
    previous = _quiet_override
    set_quiet(enabled)
    try:
        yield
    finally:
        set_quiet(previous)

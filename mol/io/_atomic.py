"""Atomic output directories: build beside the target, rename into place only on success."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output_dir"]


@contextmanager
def atomic_output_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; move it to ``target`` on success.

    The temporary directory is a hidden sibling (same filesystem, so the final rename is
    atomic). If the body raises, the temporary directory is removed and ``target`` is left as
    it was. An existing non-empty ``target`` is refused before any work starts unless
    ``overwrite=True``; then the old directory is replaced only once the new one is complete.

    Raises:
        FileExistsError: ``target`` exists and is a non-empty directory (or a file) and
            ``overwrite`` is False.
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not overwrite:
        if not target.is_dir():
            raise FileExistsError(f"output path {target} exists and is a file")
        if any(target.iterdir()):
            raise FileExistsError(
                f"output directory {target} exists and is not empty (pass overwrite=True / --overwrite)"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: it creates mode 0o700, and the rename would then hand that to the
    # final output. mkdir honours the umask like any other directory the user creates.
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    # Move the old output aside first so that a failure here never leaves neither of them.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        shutil.rmtree(new, ignore_errors=True)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()

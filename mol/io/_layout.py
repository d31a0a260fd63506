"""Which weight files a model directory holds: safetensors (preferred) or pickle, sharded or not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mol._errors import CorruptCheckpointError, ModelNotFoundError, UnsafeCheckpointError

__all__ = ["CheckpointLayout", "find_checkpoint", "pickle_refused"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_FILE = "pytorch_model.bin"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class CheckpointLayout:
    """The weight files of one checkpoint.

    ``weight_map`` (tensor name -> file) comes from a shard index; it is None when the files'
    own headers are the only listing.
    """

    kind: Literal["safetensors", "pickle"]
    files: tuple[Path, ...]
    weight_map: dict[str, Path] | None = None
    index: Path | None = None


def find_checkpoint(path: Path) -> CheckpointLayout:
    """Find the weights under ``path``: a model directory, or one ``.safetensors``/``.bin`` file.

    Order of preference: ``model.safetensors.index.json``, ``model.safetensors``, any other
    ``*.safetensors``, ``pytorch_model.bin.index.json``, ``pytorch_model.bin``.

    Raises:
        ModelNotFoundError: ``path`` does not exist or holds no weights (the message lists
            what it does hold).
        CorruptCheckpointError: an index is unreadable or names a shard that is missing.
    """
    if path.is_file():
        if path.suffix == ".safetensors":
            return CheckpointLayout(kind="safetensors", files=(path,))
        if path.suffix in _PICKLE_SUFFIXES:
            return CheckpointLayout(kind="pickle", files=(path,))
        raise ModelNotFoundError(
            f"{path} is not a weights file (expected a model directory, or a file ending in "
            f".safetensors or {', '.join(_PICKLE_SUFFIXES)})"
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"no model directory or weights file at {path}")
    if (path / SAFETENSORS_INDEX).is_file():
        return _from_index(path / SAFETENSORS_INDEX, "safetensors")
    if (path / SAFETENSORS_FILE).is_file():
        return CheckpointLayout(kind="safetensors", files=(path / SAFETENSORS_FILE,))
    others = tuple(sorted(p for p in path.glob("*.safetensors") if p.is_file()))
    if others:
        return CheckpointLayout(kind="safetensors", files=others)
    if (path / PICKLE_INDEX).is_file():
        return _from_index(path / PICKLE_INDEX, "pickle")
    if (path / PICKLE_FILE).is_file():
        return CheckpointLayout(kind="pickle", files=(path / PICKLE_FILE,))
    present = sorted(p.name for p in path.iterdir())
    raise ModelNotFoundError(
        f"no weights in {path}: looked for {SAFETENSORS_INDEX}, {SAFETENSORS_FILE}, "
        f"*.safetensors, {PICKLE_INDEX} and {PICKLE_FILE}; the directory holds "
        f"{', '.join(present) if present else 'nothing'}"
    )


def pickle_refused(layout: CheckpointLayout) -> UnsafeCheckpointError:
    """The error for a pickle-only checkpoint when the caller did not pass ``allow_pickle``."""
    where = layout.index or layout.files[0]
    return UnsafeCheckpointError(
        f"{where} is a pickle checkpoint (no safetensors weights found beside it). Unpickling "
        "can run arbitrary code, so it is refused by default; pass allow_pickle=True if you "
        "trust this file (it is then read with torch.load(weights_only=True))"
    )


def _from_index(index: Path, kind: Literal["safetensors", "pickle"]) -> CheckpointLayout:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(
            f"shard index {index} is unreadable or has no 'weight_map': {err}"
        ) from err
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptCheckpointError(f"shard index {index}: 'weight_map' is not name -> file")

    files: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if shard in files:
            continue
        shard_path = index.parent / shard
        # An index is data from the model's author; it may not point outside the directory.
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CorruptCheckpointError(
                f"shard index {index} names shard '{shard}' outside the model directory"
            )
        if not shard_path.is_file():
            raise CorruptCheckpointError(
                f"shard index {index} maps tensor '{name}' to shard {shard_path}, "
                "which does not exist"
            )
        files[shard] = shard_path
    return CheckpointLayout(
        kind=kind,
        files=tuple(files.values()),
        weight_map={name: files[shard] for name, shard in weight_map.items()},
        index=index,
    )

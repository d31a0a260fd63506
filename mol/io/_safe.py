"""Save and load a module's weights as one safetensors file, with JSON metadata, atomically."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_model

from mol._errors import CheckpointMismatchError, CorruptCheckpointError, ModelNotFoundError
from mol.io._header import read_safetensors_header

__all__ = ["load_model_safe", "save_model_safe"]

METADATA_KEY = "mol.metadata"
_WEIGHTS_NAME = "model.safetensors"
_MAX_LISTED = 10


def save_model_safe(
    model: torch.nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.state_dict()`` to a safetensors file, atomically.

    Tensors that share storage (tied embeddings) are written once, as
    ``safetensors.torch.save_model`` does. ``metadata`` is stored as JSON under the
    ``"mol.metadata"`` header key (safetensors metadata is str -> str), beside
    ``"format": "pt"``, and :func:`load_model_safe` returns it unchanged.

    Args:
        model: any ``torch.nn.Module``.
        path: a file ending in ``.safetensors``, or a directory (created if needed) that gets
            ``model.safetensors``. Other files in the directory are left alone.
        metadata: a dict of JSON values (str keys; dict, list, str, int, float, bool, None).

    Returns:
        The path of the written file.

    Raises:
        TypeError: ``metadata`` is not a dict or holds a value JSON cannot round-trip exactly
            (tuples, non-str keys, NaN, other objects); the message gives its location.
    """
    target = _weights_file(path)
    header = {"format": "pt", METADATA_KEY: _encode_metadata(metadata or {})}
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling name rather than tempfile.mkstemp, whose 0o600 mode would survive the
    # rename; written in full, then renamed over the target in one step.
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        save_model(model, str(tmp), metadata=header)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def load_model_safe(
    model: torch.nn.Module, path: str | os.PathLike, strict: bool = True
) -> dict[str, Any]:
    """Load a file written by :func:`save_model_safe` into ``model``; return its metadata.

    Keys of ``model`` that share storage with a key in the file (tied weights dropped on save)
    are not missing. Shapes must match; dtypes are cast to the model's.

    Args:
        model: the module to fill in place.
        path: the ``.safetensors`` file, or the directory holding ``model.safetensors``.
        strict: raise on missing or unexpected keys (shape mismatches always raise).

    Returns:
        The metadata dict given to :func:`save_model_safe` (``{}`` if none). For a file not
        written by Mango, its raw str -> str header metadata.

    Raises:
        ModelNotFoundError: no such file.
        CorruptCheckpointError: the file is truncated or its header is broken.
        CheckpointMismatchError: names the missing, unexpected and mis-shaped keys.
    """
    file = _weights_file(path)
    if not file.is_file():
        raise ModelNotFoundError(f"no weights file at {file}")
    header = read_safetensors_header(file)
    state = model.state_dict()
    _check_fit(file, header.tensors, state, strict)

    wanted = [name for name in header.tensors if name in state]
    with safe_open(str(file), framework="pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name) for name in wanted}
    model.load_state_dict(tensors, strict=False)
    return _decode_metadata(file, header.metadata)


def _weights_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser().absolute()
    return path if path.suffix == ".safetensors" else path / _WEIGHTS_NAME


def _check_fit(file: Path, in_file: dict, state: dict[str, torch.Tensor], strict: bool) -> None:
    storage_of = {name: _storage_key(t) for name, t in state.items()}
    present = {storage_of[name] for name in in_file if name in state} - {None}
    missing = [name for name in state if name not in in_file and storage_of[name] not in present]
    unexpected = [name for name in in_file if name not in state]
    mis_shaped = [
        f"{name}: file {tuple(info.shape)} vs model {tuple(state[name].shape)}"
        for name, info in in_file.items()
        if name in state and tuple(info.shape) != tuple(state[name].shape)
    ]
    problems = []
    if mis_shaped:
        problems.append("shape mismatch for " + _listing(mis_shaped))
    if strict and missing:
        problems.append("missing keys (in the model, not the file): " + _listing(missing))
    if strict and unexpected:
        problems.append("unexpected keys (in the file, not the model): " + _listing(unexpected))
    if problems:
        raise CheckpointMismatchError(f"{file} does not fit the model: " + "; ".join(problems))


def _storage_key(tensor: torch.Tensor) -> tuple | None:
    # Meta and empty tensors have no storage to share.
    ptr = tensor.untyped_storage().data_ptr()
    return (tensor.device, ptr) if ptr else None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _encode_metadata(metadata: Any) -> str:
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    _check_json(metadata, "metadata")
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False)


def _check_json(value: Any, where: str) -> None:
    """Refuse what JSON would silently change (tuple -> list, 1 -> "1" as a key, NaN)."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value}, which JSON cannot store")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r}: metadata dict keys must be str")
            _check_json(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; metadata values must be dict, list, str, int, "
        "float, bool or None"
    )


def _decode_metadata(file: Path, raw: dict[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in raw:
        return dict(raw)
    try:
        return json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(
            f"{file}: header key '{METADATA_KEY}' is not valid JSON ({err})"
        ) from err

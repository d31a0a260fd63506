"""Read and check a safetensors header without touching the tensor data.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
``N``, ``N`` bytes of JSON (``{name: {"dtype", "shape", "data_offsets": [start, end]}, ...}``
plus an optional ``"__metadata__"`` str -> str map), then the data. Offsets are relative to the
start of the data, so an intact file is exactly ``8 + N + max(end)`` bytes long.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from mol._errors import CorruptCheckpointError

__all__ = ["SAFETENSORS_DTYPES", "SafetensorsHeader", "TensorInfo", "read_safetensors_header"]

# safetensors itself refuses headers above 100 MB; so do we, before reading them.
_MAX_HEADER_BYTES = 100_000_000

_DTYPE_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    code: getattr(torch, name) for code, name in _DTYPE_NAMES.items() if hasattr(torch, name)
}
"""safetensors dtype codes (``"F32"``, ``"BF16"``, ...) -> torch dtypes this torch build has."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header: dtype code, shape, byte range in the data."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The checked header of one safetensors file."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_offset: int = 0  # where the data starts in the file: 8 + header length


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read ``path``'s header and check it against the file's size.

    Raises:
        CorruptCheckpointError: the file is too short, the header is not valid JSON of the
            expected shape, or the file is shorter (truncated) or longer than the data the
            header describes. The message names the file.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CorruptCheckpointError(
                f"{path} is {size} bytes long, too short to be a safetensors file"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8 or header_len > _MAX_HEADER_BYTES:
            raise CorruptCheckpointError(
                f"{path} has a broken header: it claims {header_len} header bytes but the file "
                f"has {size - 8} after the length prefix (truncated, or not a safetensors file)"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path} has a broken header: not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} has a broken header: expected a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptCheckpointError(f"{path} has a broken header: __metadata__ is not str -> str")

    tensors = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
    expected = 8 + header_len + max((t.end for t in tensors.values()), default=0)
    if size < expected:
        raise CorruptCheckpointError(
            f"{path} is truncated: its header describes {expected} bytes but the file has {size}"
        )
    if size > expected:
        raise CorruptCheckpointError(
            f"{path} is corrupt: {size - expected} bytes follow the data its header describes"
        )
    return SafetensorsHeader(
        path=path, metadata=metadata, tensors=tensors, data_offset=8 + header_len
    )


def _tensor_info(path: Path, name: str, entry: object) -> TensorInfo:
    try:
        dtype = entry["dtype"]  # type: ignore[index]
        shape = tuple(entry["shape"])  # type: ignore[index]
        start, end = entry["data_offsets"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as err:
        raise CorruptCheckpointError(
            f"{path} has a broken header: malformed entry for tensor '{name}'"
        ) from err
    ints = (start, end, *shape)
    if (
        not isinstance(dtype, str)
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ints)
        or start > end
    ):
        raise CorruptCheckpointError(
            f"{path} has a broken header: bad dtype, shape or data_offsets for tensor '{name}'"
        )
    return TensorInfo(dtype=dtype, shape=shape, start=start, end=end)

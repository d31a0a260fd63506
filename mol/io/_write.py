"""Stream tensors into (sharded) safetensors files whose layout is planned up front.

Because every output tensor's name, shape and dtype are known before any is computed, each
shard's header can be written first and each tensor's bytes appended as soon as it exists:
peak memory is one tensor, whatever the model's size.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from mol.io._header import SAFETENSORS_DTYPES

__all__ = ["PlannedTensor", "ShardedSafetensorsWriter"]

_DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
_INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class PlannedTensor:
    """An output tensor announced before it is computed."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Size of its data in bytes."""
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class ShardedSafetensorsWriter:
    """Write ``plan``'s tensors, in plan order, into shards of at most ``max_shard_bytes``.

    One shard is named ``model.safetensors``; several are ``model-0000i-of-0000n.safetensors``
    with a ``model.safetensors.index.json`` (``weight_map`` and ``metadata.total_size``), the
    layout ``transformers`` reads. A tensor larger than the limit gets a shard of its own.

    Raises:
        ValueError: a tensor arrives out of order, or with another shape or dtype than planned.
    """

    def __init__(
        self,
        out_dir: Path,
        plan: Sequence[PlannedTensor],
        *,
        max_shard_bytes: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        names = [t.name for t in plan]
        if len(set(names)) != len(names):
            raise ValueError("the output plan names a tensor twice")
        self._dir = Path(out_dir)
        self._metadata = {"format": "pt", **(metadata or {})}
        self._shards = _split(list(plan), max_shard_bytes)
        self._position = (0, 0)  # (shard, tensor within shard)
        self._file: BinaryIO | None = None

    @property
    def shard_names(self) -> list[str]:
        """File names of the shards, in order."""
        n = len(self._shards)
        if n == 1:
            return ["model.safetensors"]
        return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor's data (moved to CPU, contiguous)."""
        shard, index = self._position
        if shard >= len(self._shards):
            raise ValueError(f"tensor {name!r} written after the whole plan was written")
        expected = self._shards[shard][index]
        if name != expected.name:
            raise ValueError(f"expected tensor {expected.name!r} next, got {name!r}")
        if tuple(tensor.shape) != expected.shape or tensor.dtype != expected.dtype:
            raise ValueError(
                f"tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, planned "
                f"{expected.shape} {expected.dtype}"
            )
        if self._file is None:
            self._file = self._open_shard(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if data.numel():
            self._file.write(memoryview(data.numpy()))  # no intermediate bytes copy
        index += 1
        if index == len(self._shards[shard]):
            self._file.close()
            self._file = None
            shard, index = shard + 1, 0
        self._position = (shard, index)

    def close(self) -> None:
        """Check that every planned tensor was written and write the index (several shards).

        Raises:
            ValueError: some planned tensors were never written.
        """
        shard, index = self._position
        if shard < len(self._shards):
            missing = [t.name for s in self._shards[shard:] for t in s][index:]
            if self._file is not None:
                self._file.close()
                self._file = None
            raise ValueError(f"{len(missing)} planned tensors were not written: {missing[:5]}")
        if len(self._shards) > 1:
            weight_map = {
                t.name: file
                for file, tensors in zip(self.shard_names, self._shards, strict=True)
                for t in tensors
            }
            total = sum(t.nbytes for tensors in self._shards for t in tensors)
            index_data = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self._dir / _INDEX_NAME).write_text(json.dumps(index_data, indent=2) + "\n")

    def _open_shard(self, shard: int) -> BinaryIO:
        header: dict[str, object] = {"__metadata__": self._metadata}
        offset = 0
        for t in self._shards[shard]:
            header[t.name] = {
                "dtype": _DTYPE_CODES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        f = open(self._dir / self.shard_names[shard], "wb")  # noqa: SIM115 (closed in write/close)
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        return f


def _split(plan: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in plan:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards

"""Tensor-by-tensor, memory-mapped access to a checkpoint without building the model."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from mol._errors import CorruptCheckpointError, closest_match_hint
from mol.io._header import SAFETENSORS_DTYPES, read_safetensors_header
from mol.io._layout import CheckpointLayout, find_checkpoint, pickle_refused
from mol.io._pickle import load_pickled_state_dict

__all__ = ["LazyCheckpoint"]


class LazyCheckpoint:
    """Read a checkpoint's tensors one at a time, memory-mapped, without building the model.

    ``model_dir`` is a model directory (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``; pickle ``pytorch_model.bin`` files only with
    ``allow_pickle=True``) or a single ``.safetensors`` file. Every shard's header is read and
    checked up front (cheap: no tensor data); a ``safe_open`` handle per shard is opened on first
    use and kept until :meth:`close`. Use it as a context manager::

        with LazyCheckpoint(model_dir) as ckpt:
            for name in ckpt.keys():
                w = ckpt.get_tensor(name)  # (shape of that tensor), on CPU

    Raises:
        ModelNotFoundError: ``model_dir`` does not exist or holds no weights.
        UnsafeCheckpointError: only pickle weights and ``allow_pickle`` is False; or, with
            ``allow_pickle=True``, the pickle holds objects other than tensors.
        CorruptCheckpointError: a file is truncated or has a broken header, or the index names
            a missing shard or a tensor its shard lacks (the message names both).
    """

    def __init__(self, model_dir: str | os.PathLike, *, allow_pickle: bool = False) -> None:
        self.path = Path(model_dir).expanduser().resolve()
        layout = find_checkpoint(self.path)
        if layout.kind == "pickle" and not allow_pickle:
            raise pickle_refused(layout)
        shard_type = _SafetensorsShard if layout.kind == "safetensors" else _PickleShard
        self._shards = {f: shard_type(f) for f in layout.files}
        self._where = _weight_map(layout, self._shards)

    def keys(self) -> list[str]:
        """All tensor names, sorted."""
        return sorted(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``, read from the header (no data is loaded)."""
        return self._shard(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        """The dtype of tensor ``name``, read from the header (no data is loaded)."""
        return self._shard(name).dtype(name)

    def get_tensor(self, name: str) -> torch.Tensor:
        """Load tensor ``name`` onto the CPU as a new tensor (its own memory, safe to modify)."""
        return self._shard(name).get_tensor(name)

    def get_slice(self, name: str) -> Any:
        """A lazy view of tensor ``name``: index it (``s[0:4, :]``) to load only that part.

        The view also has ``get_shape()``. For safetensors it is safetensors' own slice object.
        """
        return self._shard(name).get_slice(name)

    def file_of(self, name: str) -> Path:
        """The weight file that holds tensor ``name``."""
        return self._shard(name).path

    def metadata(self) -> dict[str, str]:
        """The files' ``__metadata__`` (str -> str), merged over shards; the first shard wins."""
        merged: dict[str, str] = {}
        for shard in reversed(list(self._shards.values())):
            merged.update(shard.metadata())
        return merged

    def close(self) -> None:
        """Release every open file handle; a later access reopens the shard it needs."""
        for shard in self._shards.values():
            shard.close()

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyCheckpoint({str(self.path)!r}, tensors={len(self)}, files={len(self._shards)})"

    def _shard(self, name: str) -> _SafetensorsShard | _PickleShard:
        try:
            return self._where[name]
        except KeyError:
            hint = closest_match_hint(name, self._where)
            raise KeyError(f"tensor '{name}' is not in checkpoint {self.path}{hint}") from None


def _weight_map(
    layout: CheckpointLayout, shards: dict[Path, _SafetensorsShard | _PickleShard]
) -> dict[str, _SafetensorsShard | _PickleShard]:
    where: dict[str, _SafetensorsShard | _PickleShard] = {}
    if layout.weight_map is not None:
        for name, file in layout.weight_map.items():
            if name not in shards[file].names:
                raise CorruptCheckpointError(
                    f"shard index {layout.index} lists tensor '{name}' in {file}, "
                    "but that shard does not contain it"
                )
            where[name] = shards[file]
        return where
    for shard in shards.values():
        for name in shard.names:
            if name in where:
                raise CorruptCheckpointError(
                    f"tensor '{name}' is in both {where[name].path} and {shard.path}"
                )
            where[name] = shard
    return where


class _SafetensorsShard:
    """One safetensors file: checked header now, file opened on first use.

    ``get_tensor`` reads a tensor's bytes with ``pread`` into fresh memory instead of touching a
    memory map: mapped pages of a 10 GB checkpoint count towards the process's resident memory
    once read, while a read buffer is freed with the tensor. ``get_slice`` keeps using
    safetensors' memory map (it reads only the slice).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = read_safetensors_header(path)
        self.names = frozenset(self.header.tensors)
        self._handle: Any = None
        self._fd: int | None = None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.header.tensors[name].shape

    def dtype(self, name: str) -> torch.dtype:
        code = self.header.tensors[name].dtype
        if code not in SAFETENSORS_DTYPES:
            raise CorruptCheckpointError(
                f"tensor '{name}' in {self.path} has dtype {code}, unknown to this torch build"
            )
        return SAFETENSORS_DTYPES[code]

    def get_tensor(self, name: str) -> torch.Tensor:
        info = self.header.tensors[name]
        dtype = self.dtype(name)
        nbytes = info.end - info.start
        if nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        offset, done = self.header.data_offset + info.start, 0
        while done < nbytes:
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise CorruptCheckpointError(
                    f"cannot read tensor '{name}' from {self.path}: the file ended early"
                )
            done += got
        tensor = buffer.view(dtype).reshape(info.shape)
        return tensor if sys.byteorder == "little" else tensor.byteswap()

    def get_slice(self, name: str) -> Any:
        try:
            return self._open().get_slice(name)
        except SafetensorError as err:
            raise CorruptCheckpointError(
                f"cannot read tensor '{name}' from {self.path}: {err}"
            ) from err

    def metadata(self) -> dict[str, str]:
        return dict(self.header.metadata)

    def close(self) -> None:
        # safe_open has no close(); dropping the last reference unmaps the file.
        self._handle = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> Any:
        if self._handle is None:
            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except (SafetensorError, OSError) as err:
                raise CorruptCheckpointError(f"cannot open {self.path}: {err}") from err
        return self._handle


class _PickleShard:
    """One ``torch.save`` file, loaded memory-mapped with ``weights_only=True``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tensors: dict[str, torch.Tensor] | None = load_pickled_state_dict(path)
        self.names = frozenset(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state()[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._state()[name].dtype

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._state()[name].clone()

    def get_slice(self, name: str) -> _TensorSlice:
        return _TensorSlice(self._state()[name])

    def metadata(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self._tensors = None

    def _state(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = load_pickled_state_dict(self.path)
        return self._tensors


class _TensorSlice:
    """The subset of safetensors' slice API that a memory-mapped tensor can offer."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self._tensor.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._tensor[index].clone()

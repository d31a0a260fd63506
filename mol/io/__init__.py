"""Loading and saving, safe by default.

- :func:`resolve_model_dir`: local directory or hub repo id -> local directory.
- :class:`LazyCheckpoint`: one tensor at a time, memory-mapped, from (sharded) safetensors.
- :func:`load_causal_lm`, :func:`load_tokenizer`: transformers loaders, safetensors only and
  no remote code unless the caller opts in.
- :func:`save_model_safe`, :func:`load_model_safe`: one module <-> one safetensors file with
  JSON metadata.
- :class:`ShardedSafetensorsWriter`: stream planned tensors into sharded safetensors.
- :func:`atomic_output_dir`: build an output directory beside its target, rename on success.

Pickle (``torch.load``) is refused unless ``allow_pickle=True``, and even then only tensors are
unpickled (``weights_only=True``).
"""

from mol._errors import CheckpointMismatchError
from mol.io._atomic import atomic_output_dir
from mol.io._hf import load_causal_lm, load_tokenizer
from mol.io._lazy import LazyCheckpoint
from mol.io._resolve import DEFAULT_ALLOW_PATTERNS, resolve_model_dir
from mol.io._safe import load_model_safe, save_model_safe
from mol.io._write import PlannedTensor, ShardedSafetensorsWriter

__all__ = [
    "DEFAULT_ALLOW_PATTERNS",
    "CheckpointMismatchError",
    "LazyCheckpoint",
    "PlannedTensor",
    "ShardedSafetensorsWriter",
    "atomic_output_dir",
    "load_causal_lm",
    "load_model_safe",
    "load_tokenizer",
    "resolve_model_dir",
    "save_model_safe",
]

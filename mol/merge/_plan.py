"""Plan a merge: which input tensors make each output tensor, with which parameters.

Planning reads only ``config.json`` files and safetensors headers, so every structural problem
(missing models, architecture or shape mismatches, vocabulary sizes, layer ranges, parameters)
is reported before a single tensor is loaded.

The layout follows mergekit: a ``models:`` config becomes one slice whose sources are the
models' full layer ranges (the base model appended when it is not listed); each output layer
``i`` of a slice merges source layer ``layer_range[0] + i`` of every source, with gradient
position ``t = i / (n - 1)``; tensors before the layer stack (embeddings) come from the first
slice's sources and tensors after it (final norm, LM head) from the last slice's, both at
``t = 0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mol._errors import ConfigError, UnsupportedArchitectureError
from mol.arch import ArchitectureInfo, detect_architecture
from mol.io import LazyCheckpoint, resolve_model_dir
from mol.merge._chat import check_chat_template
from mol.merge._params import resolve_params, slice_base_model
from mol.merge._vocab import VocabAlignment, build_alignment
from mol.merge.config import MergeConfiguration, parse_model_reference
from mol.merge.methods import MethodSpec, get_method

__all__ = ["MergeOptions", "TensorTask", "MergePlan", "plan_merge"]

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class MergeOptions:
    """How to run a merge (what the CLI flags set); the YAML says what to merge."""

    device: str = "cpu"
    dtype: str | None = None
    out_shard_size: int = 5 * 1000**3
    overwrite: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    random_seed: int | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.out_shard_size <= 0:
            raise ConfigError(f"out_shard_size must be positive, got {self.out_shard_size}")


@dataclass(frozen=True)
class TensorTask:
    """One output tensor: its inputs ``(model, tensor name)``, base position and parameters."""

    name: str
    inputs: tuple[tuple[str, str], ...]
    base_index: int | None
    params: dict
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    layer: int | None = None
    copy: bool = False  # one input only (missing-tensor policy): copied unchanged
    vocab: bool = False  # rows are tokens: permuted into the output vocabulary first


@dataclass
class MergePlan:
    """Everything the executor needs; built by :func:`plan_merge`."""

    config: MergeConfiguration
    method: MethodSpec
    models: dict[str, Path]  # model reference -> local directory
    checkpoints: dict[str, LazyCheckpoint]  # model reference -> lazy weights
    arch: ArchitectureInfo  # of the model whose config.json is written
    config_source: str  # that model's reference
    num_layers: int  # layers of the output model
    tasks: list[TensorTask] = field(default_factory=list)
    compute_dtype: torch.dtype = torch.float32
    trust_remote_code: bool = False
    vocab: VocabAlignment | None = None  # set when tokenizer_source asks for alignment

    @property
    def num_bytes(self) -> int:
        """Total size of the output tensors."""
        return sum(t.out_dtype.itemsize * _numel(t.shape) for t in self.tasks)

    def close(self) -> None:
        """Release the checkpoints' file handles."""
        for ckpt in self.checkpoints.values():
            ckpt.close()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass(frozen=True)
class _Source:
    model: str
    start: int
    end: int
    parameters: dict | None


def plan_merge(config: MergeConfiguration, options: MergeOptions | None = None) -> MergePlan:
    """Check ``config`` against the models it names and list the output tensors.

    Raises:
        ConfigError: parameters, layer ranges, dtypes or input counts are wrong.
        ModelNotFoundError: a model is neither a local directory nor on the hub.
        UnsupportedArchitectureError: the models are of different architectures or shapes.
    """
    options = options or MergeOptions()
    method = get_method(config.merge_method)
    if config.modules:
        raise ConfigError(
            "the modules: form (multi-module models) is not supported by "
            "mol-merge; write the merge with models: or slices:"
        )
    check_chat_template(config.chat_template)
    slices = _normalised_slices(config)
    refs = list(
        dict.fromkeys(
            [s.model for sl in slices for s in sl]
            + ([config.base_model] if config.base_model and method.base != "ignored" else [])
        )
    )
    models = {ref: _resolve(ref, options) for ref in refs}
    archs = {
        ref: detect_architecture(path, trust_remote_code=options.trust_remote_code)
        for ref, path in models.items()
    }
    _check_same_family(archs)
    checkpoints = {
        ref: LazyCheckpoint(path, allow_pickle=options.allow_pickle) for ref, path in models.items()
    }
    config_source = config.base_model if config.base_model in models else slices[0][0].model
    arch = archs[config_source]
    compute = _DTYPES[options.dtype or config.dtype or "float32"]
    if compute in (torch.float16, torch.bfloat16):
        compute = torch.float32  # low-precision inputs are merged in float32, then cast
    try:
        slices = _fill_ranges(slices, archs)
        plan = MergePlan(
            config,
            method,
            models,
            checkpoints,
            arch,
            config_source,
            num_layers=sum(sl[0].end - sl[0].start for sl in slices),
            compute_dtype=compute,
        )
        plan.trust_remote_code = options.trust_remote_code
        plan.vocab = build_alignment(
            config,
            models,
            config.base_model,
            slices[0][0].model,
            trust_remote_code=options.trust_remote_code,
        )
        _plan_tensors(plan, slices, archs)
    except BaseException:
        for ckpt in checkpoints.values():
            ckpt.close()
        raise
    return plan


def _resolve(ref: str, options: MergeOptions) -> Path:
    """A model reference (``path[@revision]``) -> its local directory."""
    parsed = parse_model_reference(ref)
    if parsed.lora_path is not None:
        raise ConfigError(
            f"model {ref!r}: LoRA references (model+lora) are not supported by "
            "mol-merge; merge the adapter into the model first (peft merge_and_unload)"
        )
    return resolve_model_dir(
        parsed.path, revision=parsed.revision, allow_pickle=options.allow_pickle
    )


def _normalised_slices(config: MergeConfiguration) -> list[list[_Source]]:
    """``models:`` -> one slice of full layer ranges (end -1: filled in later), base appended."""
    if config.slices:
        return [
            [_Source(s.model, s.layer_range[0], s.layer_range[1], s.parameters) for s in sl.sources]
            for sl in config.slices
        ]
    sources = [_Source(m.model, 0, -1, m.parameters) for m in config.models]
    if config.base_model and config.base_model not in [m.model for m in config.models]:
        sources.append(_Source(config.base_model, 0, -1, None))
    return [sources]


def _check_same_family(archs: dict[str, ArchitectureInfo]) -> None:
    kinds = {(a.architecture_type, a.layer_path) for a in archs.values()}
    if len(kinds) > 1:
        listing = ", ".join(f"{ref} ({a.architecture_type})" for ref, a in archs.items())
        raise UnsupportedArchitectureError(
            f"cannot merge models of different architectures: {listing}"
        )


def _fill_ranges(
    slices: list[list[_Source]], archs: dict[str, ArchitectureInfo]
) -> list[list[_Source]]:
    out = []
    for i, sl in enumerate(slices):
        filled = []
        for s in sl:
            n = archs[s.model].num_layers
            end = n if s.end == -1 else s.end
            if not 0 <= s.start < end <= n:
                raise ConfigError(
                    f"slices[{i}]: layer_range [{s.start}, {end}] of {s.model} is outside its "
                    f"{n} layers (need 0 <= start < end <= {n})"
                )
            filled.append(_Source(s.model, s.start, end, s.parameters))
        lengths = {s.end - s.start for s in filled}
        if len(lengths) != 1:
            raise ConfigError(
                f"slices[{i}]: every source must span the same number of layers, got "
                + ", ".join(f"{s.model}: {s.end - s.start}" for s in filled)
            )
        out.append(filled)
    return out


def _plan_tensors(
    plan: MergePlan, slices: list[list[_Source]], archs: dict[str, ArchitectureInfo]
) -> None:
    arch = plan.arch
    layer_re = re.compile(rf"^{re.escape(arch.layer_path)}\.(\d+)\.(.+)$")
    pre_prefixes = tuple(p + "." for p in (arch.embedding_path, arch.position_embedding_path) if p)

    def outside_layers(ref: str) -> list[str]:
        return [n for n in plan.checkpoints[ref].keys() if not layer_re.match(n)]

    first, last = slices[0], slices[-1]
    for name in outside_layers(first[0].model):
        if name.startswith(pre_prefixes):
            _add_task(plan, name, [(s.model, name) for s in first], first, 0, 0.0, None)
    out_layer = 0
    for slice_index, sl in enumerate(slices):
        length = sl[0].end - sl[0].start
        for offset in range(length):
            t = offset / (length - 1) if length > 1 else 1.0
            prefix = f"{arch.layer_path}.{sl[0].start + offset}."
            suffixes = [
                n[len(prefix) :]
                for n in plan.checkpoints[sl[0].model].keys()
                if n.startswith(prefix)
            ]
            if not suffixes:
                raise ConfigError(f"{sl[0].model} has no tensors for layer {sl[0].start + offset}")
            for suffix in suffixes:
                inputs = [(s.model, f"{arch.layer_path}.{s.start + offset}.{suffix}") for s in sl]
                _add_task(
                    plan,
                    f"{arch.layer_path}.{out_layer}.{suffix}",
                    inputs,
                    sl,
                    slice_index,
                    t,
                    out_layer,
                )
            out_layer += 1
    for name in outside_layers(last[0].model):
        if not name.startswith(pre_prefixes):
            _add_task(plan, name, [(s.model, name) for s in last], last, len(slices) - 1, 0.0, None)


def _add_task(
    plan: MergePlan,
    out_name: str,
    inputs: list[tuple[str, str]],
    sources: list[_Source],
    slice_index: int,
    t: float,
    layer: int | None,
) -> None:
    method = plan.method
    present = [(m, n) for m, n in inputs if n in plan.checkpoints[m]]
    base = slice_base_model(plan.config, slice_index=slice_index)
    if len(present) < len(inputs):
        lacking = [m for m, n in inputs if (m, n) not in present]
        if method.missing_tensor == "passthrough_singleton" and len(present) == 1:
            inputs = present
        elif method.missing_tensor == "base_or_skip":
            if not any(m == base for m, _ in present):
                return
            inputs = [(m, n) for m, n in present if m == base]
        else:
            raise UnsupportedArchitectureError(
                f"tensor {out_name!r} is missing from {', '.join(lacking)} "
                f"(present in {', '.join(m for m, _ in present) or 'no model'})"
            )
    shapes = {m: plan.checkpoints[m].shape(n) for m, n in inputs}
    vocab_names = {f"{p}.weight" for p in (plan.arch.embedding_path, plan.arch.lm_head_path) if p}
    is_vocab = out_name in vocab_names and plan.vocab is not None
    compared = {m: s[1:] for m, s in shapes.items()} if is_vocab else shapes
    if len(set(compared.values())) > 1:
        listing = ", ".join(f"{m}: {list(s)}" for m, s in shapes.items())
        hint = ""
        if out_name in vocab_names and len({s[1:] for s in shapes.values()}) == 1:
            hint = (
                "; the vocabularies differ: set tokenizer_source (base, union or a model) "
                "to align them"
            )
        raise UnsupportedArchitectureError(
            f"tensor {out_name!r} has different shapes: {listing}{hint}"
        )
    models = [m for m, _ in inputs]
    base_index = models.index(base) if base in models and method.base != "ignored" else None
    copy = len(inputs) == 1 and len(sources) > 1
    params = {} if copy else _params(plan, out_name, inputs, base_index, slice_index, t)
    out_dtype = _out_dtype(plan, inputs[0])
    shape = shapes[models[0]]
    if is_vocab:
        shape = (plan.vocab.size, *shape[1:])
    plan.tasks.append(
        TensorTask(
            out_name, tuple(inputs), base_index, params, shape, out_dtype, layer, copy, is_vocab
        )
    )


def _out_dtype(plan: MergePlan, first_input: tuple[str, str]) -> torch.dtype:
    name = plan.config.out_dtype or plan.config.dtype
    if name is not None:
        return _DTYPES[name]
    return plan.checkpoints[first_input[0]].dtype(first_input[1])


def _params(
    plan: MergePlan,
    tensor_name: str,
    inputs: list[tuple[str, str]],
    base_index: int | None,
    slice_index: int,
    t: float,
) -> dict:
    method = plan.method
    models = [m for m, _ in inputs]
    n_base = 0 if base_index is None else 1
    if len(models) < method.min_inputs or (method.max_inputs and len(models) > method.max_inputs):
        raise ConfigError(
            f"{method.name} needs {method.min_inputs}..{method.max_inputs or 'any'} "
            f"input models for {tensor_name!r}, got {len(models)}"
        )
    non_base = len(models) - n_base
    if (method.min_non_base and non_base < method.min_non_base) or (
        method.max_non_base is not None and non_base > method.max_non_base
    ):
        raise ConfigError(
            f"{method.name} needs {method.min_non_base}..{method.max_non_base} "
            f"non-base models for {tensor_name!r}, got {non_base}"
        )
    if method.base == "required" and base_index is None:
        raise ConfigError(f"{method.name} needs base_model among the inputs of {tensor_name!r}")
    return resolve_params(
        plan.config,
        method,
        tensor_name=tensor_name,
        t=t,
        input_models=models,
        input_tensor_names=[n for _, n in inputs],
        base_index=base_index,
        slice_index=slice_index,
    )

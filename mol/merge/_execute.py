"""Run a planned merge: stream tensor by tensor into an atomic output directory."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mol._progress import progress
from mol.io import PlannedTensor, ShardedSafetensorsWriter, atomic_output_dir
from mol.merge._card import model_card
from mol.merge._chat import resolve_chat_template
from mol.merge._plan import MergeOptions, MergePlan, TensorTask, plan_merge
from mol.merge._vocab import permute_rows
from mol.merge.config import MergeConfiguration

__all__ = ["MergeResult", "run_merge", "merge_in_memory", "compute_tensor", "write_merge"]

logger = logging.getLogger("mol")

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.txt",
    "spiece.model",
)
_DEFAULT_SEED = 0


@dataclass(frozen=True)
class MergeResult:
    """What a finished merge wrote."""

    path: Path
    num_tensors: int
    num_bytes: int
    seconds: float


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from mol._errors import ConfigError

        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


def compute_tensor(
    plan: MergePlan, task: TensorTask, device: torch.device, seed: int = _DEFAULT_SEED
) -> torch.Tensor:
    """Load ``task``'s inputs, merge them in the compute dtype, return the output on the CPU.

    Randomised methods get a generator seeded from ``seed`` and the tensor's name, so a
    tensor's result does not depend on the order tensors are merged in.
    """
    tensors = [
        plan.checkpoints[m].get_tensor(n).to(device=device, dtype=plan.compute_dtype)
        for m, n in task.inputs
    ]
    if task.vocab:
        tensors = permute_rows(tensors, [m for m, _ in task.inputs], plan.vocab)
    if task.copy:
        out = tensors[0]
    else:
        generator = None
        if plan.method.randomized:
            digest = hashlib.sha256(f"{seed}:{task.name}".encode()).digest()
            generator = torch.Generator(device=device).manual_seed(
                int.from_bytes(digest[:8], "little") & (2**63 - 1)
            )
        out = plan.method.fn(
            tensors, base_index=task.base_index, generator=generator, **task.params
        )
    if tuple(out.shape) != task.shape:
        raise RuntimeError(
            f"{plan.method.name} returned shape {tuple(out.shape)} for "
            f"{task.name!r}, expected {task.shape}"
        )
    return out.to(dtype=task.out_dtype).cpu()


def merge_in_memory(
    plan: MergePlan, device: str = "cpu", seed: int | None = None
) -> dict[str, torch.Tensor]:
    """Every output tensor, in memory (for small models and the Python API)."""
    dev = resolve_device(device)
    return {
        task.name: compute_tensor(plan, task, dev, _seed(plan, seed))
        for task in progress(plan.tasks, desc="merging", unit="tensor")
    }


def run_merge(
    config: MergeConfiguration, out_path: str | Path, options: MergeOptions | None = None
) -> MergeResult:
    """Plan, then merge tensor by tensor into ``out_path`` (written atomically).

    Everything is checked before the output directory is created; a failure or an interrupt
    midway leaves no output behind. Peak memory is a few tensors, whatever the model size.
    """
    options = options or MergeOptions()
    started = time.perf_counter()
    device = resolve_device(options.device)
    plan = plan_merge(config, options)
    try:
        seed = _seed(plan, options.random_seed)
        tensors = (compute_tensor(plan, task, device, seed) for task in plan.tasks)
        write_merge(
            plan,
            tensors,
            out_path,
            overwrite=options.overwrite,
            out_shard_size=options.out_shard_size,
        )
    finally:
        plan.close()
    return MergeResult(
        Path(out_path).absolute(), len(plan.tasks), plan.num_bytes, time.perf_counter() - started
    )


def write_merge(
    plan: MergePlan,
    tensors: Iterable[torch.Tensor],
    out_path: str | Path,
    *,
    overwrite: bool = False,
    out_shard_size: int = 5 * 1000**3,
) -> Path:
    """Write ``tensors`` (one per ``plan.tasks`` entry, in order) and the model files.

    Tensors may be produced lazily; each is written as soon as it arrives. The directory is
    built beside ``out_path`` and renamed into place only when everything is written.
    """
    with atomic_output_dir(out_path, overwrite=overwrite) as tmp:
        writer = ShardedSafetensorsWriter(
            tmp,
            [PlannedTensor(t.name, t.shape, t.out_dtype) for t in plan.tasks],
            max_shard_bytes=out_shard_size,
            metadata={"merge_method": plan.method.name},
        )
        bar = progress(
            desc="merging", total=plan.num_bytes, unit="B", unit_scale=True, unit_divisor=1024
        )
        for task, tensor in zip(plan.tasks, tensors, strict=True):
            writer.write(task.name, tensor)
            bar.update(tensor.numel() * tensor.element_size())
            logger.debug("merged %s %s", task.name, tuple(task.shape))
        bar.close()
        writer.close()
        write_model_files(plan, tmp, Path(out_path).name)
    return Path(out_path).absolute()


def _seed(plan: MergePlan, seed: int | None) -> int:
    if seed is not None:
        return seed
    configured = getattr(plan.config, "random_seed", None)
    return _DEFAULT_SEED if configured is None else int(configured)


def write_model_files(plan: MergePlan, out_dir: Path, name: str) -> None:
    """config.json, generation config, tokenizer, model card and the YAML next to the weights."""
    from transformers import AutoConfig

    source = plan.models[plan.config_source]
    hf_config = AutoConfig.from_pretrained(source, trust_remote_code=plan.trust_remote_code)
    hf_config.num_hidden_layers = plan.num_layers
    if plan.vocab is not None:
        hf_config.vocab_size = plan.vocab.size
    out_dtypes = {t.out_dtype for t in plan.tasks if t.out_dtype.is_floating_point}
    if len(out_dtypes) == 1:
        hf_config.dtype = str(next(iter(out_dtypes))).removeprefix("torch.")
    hf_config.save_pretrained(out_dir)
    if (source / "generation_config.json").is_file():
        shutil.copy2(source / "generation_config.json", out_dir / "generation_config.json")
    _copy_tokenizer(plan, out_dir)
    template = resolve_chat_template(plan.config.chat_template, list(plan.models.values()))
    if template is not None:
        (out_dir / "chat_template.jinja").write_text(template)
    config_yaml = plan.config.to_yaml()
    (out_dir / "mergekit_config.yml").write_text(config_yaml)
    refs = list(plan.models)
    params = plan.tasks[0].params if plan.tasks else {}
    global_params = {
        p.name: params[p.name]
        for p in plan.method.params
        if p.scope == "global" and p.name in params
    }
    (out_dir / "README.md").write_text(
        model_card(
            name=name,
            method=plan.method.name,
            reference=plan.method.reference,
            base_model=plan.config.base_model,
            models=refs,
            parameters=global_params,
            config_yaml=config_yaml,
        )
    )


def _copy_tokenizer(plan: MergePlan, out_dir: Path) -> None:
    if plan.vocab is not None:
        plan.vocab.tokenizer.save_pretrained(out_dir)
        return
    source = plan.config.tokenizer_source
    ref = plan.config_source if source in (None, "base") else source
    if ref not in plan.models:
        from mol._errors import ConfigError

        raise ConfigError(f"tokenizer_source {source!r} is not one of the merged models")
    copied = 0
    for file in _TOKENIZER_FILES:
        if (plan.models[ref] / file).is_file():
            shutil.copy2(plan.models[ref] / file, out_dir / file)
            copied += 1
    if copied == 0:
        logger.warning("%s has no tokenizer files; the merge has none either", ref)

"""``MoLTrainer``: train a MoL runtime's adapters and routers (experts stay frozen).

Built on accelerate: devices, mixed precision and several processes (``accelerate launch``)
come from it; the loop itself is small and reads top to bottom. The loss is next-token cross
entropy (padding masked out) plus the router auxiliary losses, weighted by the config.

Data order is a seeded permutation per epoch, and a checkpoint records where in the epoch it
was taken, the optimizer and scheduler state and the RNG state, so resuming from a checkpoint
gives the same loss curve as never stopping.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mol._errors import ConfigError
from mol._progress import progress
from mol.training.config import TrainingConfig
from mol.training.data import as_blocks
from mol.training.losses import next_token_loss, router_losses, training_loss
from mol.training.state import load_training_state, save_training_state
from mol.training.tracking import make_tracker

__all__ = ["MoLTrainer", "TrainResult"]

logger = logging.getLogger("mol")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        loss_history: total loss per optimizer step (mean over its micro-batches).
        lm_loss_history: next-token loss per optimizer step.
        eval_history: ``{"step", "loss", "perplexity"}`` per evaluation.
        best_checkpoint: MoL checkpoint with the lowest eval loss (the final one without
            eval data).
        final_checkpoint: MoL checkpoint after the last step.
        steps: optimizer steps taken in all (including those before a resume).
    """

    loss_history: list[float] = field(default_factory=list)
    lm_loss_history: list[float] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    best_checkpoint: Path | None = None
    final_checkpoint: Path | None = None
    steps: int = 0


class _Blocks(Dataset):
    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.blocks[i]
        return {"input_ids": row, "attention_mask": torch.ones_like(row)}


class _EpochSampler(Sampler[int]):
    """A seeded permutation that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def _logits_and_routing(model: nn.Module, input_ids, attention_mask):
    """A MoL runtime's logits and routings, or a transformers model's logits (no routings)."""
    if hasattr(model, "logits_and_routing"):
        return model.logits_and_routing(input_ids, attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits, []


class _Objective(nn.Module):
    """The model plus its loss, so accelerate (DDP) wraps one module with one forward."""

    def __init__(self, runtime: nn.Module, config: TrainingConfig) -> None:
        super().__init__()
        self.runtime, self.config = runtime, config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        logits, routings = _logits_and_routing(self.runtime, input_ids, attention_mask)
        lm = next_token_loss(logits, input_ids, attention_mask)
        if not routings:  # a plain transformers model: the next-token loss only
            zero = lm.new_zeros(())
            aux = {"load_balancing": zero, "entropy": zero, "z_loss": zero}
            return lm, lm.detach(), aux, zero.new_zeros(0)
        aux = router_losses(routings)
        c = self.config
        total = training_loss(
            lm,
            aux,
            load_balancing_coeff=c.load_balancing_coeff,
            entropy_penalty_coeff=c.entropy_penalty_coeff,
            router_z_loss_coeff=c.router_z_loss_coeff,
        )
        balance = torch.stack([r.expert_weights() for r in routings]).mean(0).detach()
        return total, lm.detach(), {k: v.detach() for k, v in aux.items()}, balance


class MoLTrainer:
    """Train a :class:`~mol.fusion.runtime.MoLRuntime` (see the module docstring).

    A plain transformers causal LM trains too (next-token loss only), with
    ``TrainingConfig.trainable_parameters`` naming what trains: e.g. only the gates of an
    assembled Mixtral MoE. Its checkpoints are ``save_pretrained`` directories.

    Args:
        runtime: a built runtime (embeddings, head and layers set up), or a causal LM.
        config: a :class:`TrainingConfig` (default: its defaults).
        tokenizer: for text data with a plain model (default: loaded from its directory).
    """

    def __init__(
        self, runtime: nn.Module, config: TrainingConfig | None = None, *, tokenizer=None
    ) -> None:
        self.runtime = runtime
        self.config = config or TrainingConfig()
        self.is_mol = hasattr(runtime, "logits_and_routing")
        self._tokenizer = tokenizer
        self._set_trainable()
        if self.is_mol:
            self.runtime.gradient_checkpointing = self.config.use_gradient_checkpointing
        elif self.config.use_gradient_checkpointing:
            self.runtime.gradient_checkpointing_enable()

    @property
    def tokenizer(self):
        """The tokenizer text data is packed with."""
        if self._tokenizer is None:
            if self.is_mol:
                self._tokenizer = self.runtime.tokenizer
            elif getattr(self.runtime, "name_or_path", ""):
                from mol.io import load_tokenizer

                self._tokenizer = load_tokenizer(self.runtime.name_or_path)
            else:
                raise ConfigError("text data needs a tokenizer: MoLTrainer(model, tokenizer=...)")
        return self._tokenizer

    # -- what trains --------------------------------------------------------------------------
    def _set_trainable(self) -> None:
        c, rt = self.config, self.runtime
        if c.trainable_parameters is not None:
            self._set_trainable_by_pattern(c.trainable_parameters)
            return
        if not self.is_mol:
            raise ConfigError(
                "a plain transformers model trains only what training.trainable_parameters "
                "names (e.g. ['*.gate.weight'])"
            )
        chosen = {"embed_in", "head_out"}
        if c.train_embeddings:
            chosen |= {"embed_tokens", "embed_positions"}
        if c.train_lm_head:
            chosen |= {"norm", "lm_head"}
        for name, param in rt.named_parameters():
            top = name.split(".", 1)[0]
            parts = name.split(".")
            in_layer = top == "layers" and len(parts) > 2
            trainable = top in chosen or (
                in_layer
                and (
                    parts[2] in ("in_adapters", "out_adapters", "router")
                    or (parts[2] == "experts" and not c.freeze_experts)
                )
            )
            param.requires_grad_(trainable)
        if c.train_lm_head and getattr(rt.lm_head, "weight", None) is getattr(
            rt.embed_tokens, "weight", None
        ):
            logger.warning("the LM head is tied to the token embeddings: both will train")
            rt.lm_head.weight.requires_grad_(True)

    def _set_trainable_by_pattern(self, patterns: list[str]) -> None:
        matched = {p: 0 for p in patterns}
        for name, param in self.runtime.named_parameters():
            hits = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
            for p in hits:
                matched[p] += 1
            param.requires_grad_(bool(hits))
        unmatched = [p for p, n in matched.items() if n == 0]
        if unmatched:
            raise ConfigError(f"trainable_parameters: no parameter matches {unmatched}")

    def parameter_groups(self) -> list[dict]:
        """AdamW groups: routers at ``router_lr``; the rest at ``learning_rate``; no weight
        decay on biases and 1-D weights (norms)."""
        c = self.config
        groups = {
            (True, True): [],
            (True, False): [],
            (False, True): [],
            (False, False): [],
        }
        for name, param in self.runtime.named_parameters():
            if param.requires_grad:
                groups[(".router." in name, param.ndim >= 2)].append(param)
        out = []
        for (router, decay), params in groups.items():
            if params:
                lr = c.router_lr if router else c.learning_rate
                out.append(
                    {"params": params, "lr": lr, "weight_decay": c.weight_decay if decay else 0.0}
                )
        if not out:
            raise ConfigError("nothing to train: the runtime has no adapters or routers")
        return out

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, data) -> tuple[DataLoader, _EpochSampler | None]:
        if isinstance(data, DataLoader):
            return data, None
        tokenizer = None if isinstance(data, torch.Tensor) else self.tokenizer
        blocks = as_blocks(data, tokenizer, self.config.block_size)
        sampler = _EpochSampler(len(blocks), self.config.seed)
        loader = DataLoader(_Blocks(blocks), batch_size=self.config.batch_size, sampler=sampler)
        return loader, sampler

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, eval_data) -> dict[str, float]:
        """Next-token loss and perplexity on ``eval_data`` (token-weighted, padding excluded)."""
        loader = eval_data if isinstance(eval_data, DataLoader) else self._loader(eval_data)[0]
        was_training = self.runtime.training
        self.runtime.eval()
        total, count = 0.0, 0
        for batch in loader:
            ids, mask = _unpack(batch)
            logits, _ = _logits_and_routing(self.runtime, ids, mask)
            n = int(
                ((mask[:, 1:] & mask[:, :-1]).sum()) if mask is not None else ids[:, 1:].numel()
            )
            total += next_token_loss(logits, ids, mask).item() * n
            count += n
        self.runtime.train(was_training)
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(loss)}

    # -- training -----------------------------------------------------------------------------
    def train(
        self, train_data, eval_data=None, *, resume_from: str | Path | None = None
    ) -> TrainResult:
        """Train; returns the loss history and the best and final checkpoints.

        Args:
            train_data / eval_data: token blocks, text files, ``zoo:<size>/<domain>`` names,
                lists of strings, ``datasets`` datasets, or DataLoaders (see
                :func:`mol.training.data.as_blocks`).
            resume_from: a ``checkpoint-<step>`` directory written by an earlier run.
        """
        from accelerate import Accelerator

        c = self.config
        out = Path(c.output_dir)
        torch.manual_seed(c.seed)
        loader, sampler = self._loader(train_data)
        eval_loader = None if eval_data is None else self._loader(eval_data)[0]
        per_epoch = math.ceil(len(loader) / c.gradient_accumulation_steps)
        total_steps = c.max_steps or c.max_epochs * per_epoch
        accelerator = Accelerator(mixed_precision=c.mixed_precision)
        objective = _Objective(self.runtime, c)
        optimizer = torch.optim.AdamW(self.parameter_groups())
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _schedule(c.warmup_steps, total_steps)
        )
        objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
        result, position = TrainResult(), {"epoch": 0, "batch": 0, "best_eval_loss": None}
        rng = None
        if resume_from is not None:
            position, rng = self._resume(Path(resume_from), optimizer, scheduler, result)
        tracker = make_tracker(c.report_to, out, c.run_name or out.name, c.to_dict())
        bar = progress(desc="training", total=total_steps, initial=result.steps, unit="step")
        self.runtime.train()
        step_losses: list[tuple[float, float]] = []
        epoch, skip = position["epoch"], position["batch"]
        best = position["best_eval_loss"]
        while result.steps < total_steps:
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            if sampler is not None:  # accelerate's loaders pass their epoch on to the sampler
                batches.set_epoch(epoch)
            iterator = iter(batches)
            if rng is not None:  # resuming: the RNG continues from where the run stopped,
                # after the loader's first batch (starting a loader draws from the RNG)
                first = next(iterator, None)
                _set_rng(rng)
                rng = None
                iterator = iter(()) if first is None else itertools.chain([first], iterator)
            micro = skip
            for batch in iterator:
                ids, mask = _unpack(batch)
                micro += 1
                boundary = micro % c.gradient_accumulation_steps == 0 or micro == len(loader)
                context = accelerator.no_sync(objective) if not boundary else nullcontext()
                with context, accelerator.autocast():
                    total, lm, aux, balance = objective(ids, mask)
                    window = _window(micro, len(loader), c.gradient_accumulation_steps)
                    accelerator.backward(total / window)
                step_losses.append((total.item(), lm.item()))
                if not boundary:
                    continue
                if c.gradient_clip_norm is not None:
                    accelerator.clip_grad_norm_(objective.parameters(), c.gradient_clip_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                result.loss_history.append(sum(t for t, _ in step_losses) / len(step_losses))
                result.lm_loss_history.append(sum(m for _, m in step_losses) / len(step_losses))
                step_losses = []
                bar.update(1)
                bar.set_postfix(
                    loss=f"{result.loss_history[-1]:.3f}",
                    lb=f"{aux['load_balancing'].item():.2f}",
                    w="/".join(f"{w:.2f}" for w in balance.tolist()),
                )
                if tracker is not None and result.steps % c.logging_steps == 0:
                    tracker.log(
                        {"loss": result.loss_history[-1], "lm_loss": result.lm_loss_history[-1]}
                        | {f"router/{k}": v.item() for k, v in aux.items()}
                        | {"lr": scheduler.get_last_lr()[0]},
                        result.steps,
                    )
                last = result.steps >= total_steps
                if eval_loader is not None and (
                    last or (c.eval_steps and result.steps % c.eval_steps == 0)
                ):
                    metrics = self.evaluate(eval_loader)
                    result.eval_history.append({"step": result.steps, **metrics})
                    if tracker is not None:
                        tracker.log({f"eval/{k}": v for k, v in metrics.items()}, result.steps)
                    if best is None or metrics["loss"] < best:
                        best = metrics["loss"]
                        result.best_checkpoint = self._save_model(out / "best")
                if c.save_steps and (result.steps % c.save_steps == 0 or last):
                    at_end = micro == len(loader)
                    here = {
                        "epoch": epoch + at_end,
                        "batch": 0 if at_end else micro,
                        "best_eval_loss": best,
                    }
                    self._save(
                        out / f"checkpoint-{result.steps}", optimizer, scheduler, result, here
                    )
                if last:
                    break
            else:
                epoch, skip = epoch + 1, 0
                continue
            break
        bar.close()
        if tracker is not None:
            tracker.close()
        self.runtime.eval()
        result.final_checkpoint = self._save_model(out / "final")
        if result.best_checkpoint is None:
            result.best_checkpoint = result.final_checkpoint
        return result

    def _save_model(self, path: Path) -> Path:
        """The model alone: a MoL checkpoint, or a ``save_pretrained`` directory."""
        if self.is_mol:
            return self.runtime.save_checkpoint(path, overwrite=True)
        from mol.io import atomic_output_dir

        with atomic_output_dir(path, overwrite=True) as tmp:
            self.runtime.save_pretrained(tmp)
            if self._tokenizer is not None:
                self._tokenizer.save_pretrained(tmp)
        return Path(path).absolute()

    def _save(self, path: Path, optimizer, scheduler, result: TrainResult, position: dict) -> None:
        progress_doc = {
            **position,
            "steps": result.steps,
            "loss_history": result.loss_history,
            "lm_loss_history": result.lm_loss_history,
            "eval_history": result.eval_history,
            "best_checkpoint": None
            if result.best_checkpoint is None
            else str(result.best_checkpoint),
        }
        save_training_state(
            path,
            save_model=self._save_model,
            optimizer=optimizer,
            scheduler=scheduler,
            progress=progress_doc,
            config=self.config.to_dict(),
        )

    def _resume(self, path: Path, optimizer, scheduler, result: TrainResult) -> tuple[dict, dict]:
        from mol.fusion.checkpoint import load_trainable_weights

        state = load_training_state(path)
        if self.is_mol:
            load_trainable_weights(self.runtime, path / "runtime")
        else:
            from mol.io import load_model_safe

            load_model_safe(self.runtime, path / "runtime")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        p = state["progress"]
        result.steps = p["steps"]
        result.loss_history = list(p["loss_history"])
        result.lm_loss_history = list(p["lm_loss_history"])
        result.eval_history = list(p["eval_history"])
        result.best_checkpoint = (
            None if p["best_checkpoint"] is None else Path(p["best_checkpoint"])
        )
        position = {"epoch": p["epoch"], "batch": p["batch"], "best_eval_loss": p["best_eval_loss"]}
        return position, state["rng"]


def _set_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict) and "input_ids" in batch:
        mask = batch.get("attention_mask")
        return batch["input_ids"], None if mask is None else mask.long()
    raise ConfigError(
        f"a batch must be a tensor of token ids or a dict with input_ids, got {type(batch).__name__}"
    )


def _window(micro: int, n: int, accumulation: int) -> int:
    """Micro-batches in the accumulation window ``micro`` belongs to (the last may be short)."""
    start = (micro - 1) // accumulation * accumulation
    return min(accumulation, n - start)


def _schedule(warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor

"""The MoL runtime as a transformers model, so ``generate`` (GenerationMixin) works as usual.

``MoLForCausalLM`` wraps a built :class:`~mol.fusion.runtime.MoLRuntime`. Its cache,
:class:`MoLCache`, is a ``DynamicCache`` in which every expert block has its own slot (the
blocks are renumbered when added), plus each simple router's running pooling state, so
token-by-token generation sees exactly what a full forward pass sees.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

__all__ = ["MoLCache", "MoLHFConfig", "MoLForCausalLM"]


class MoLCache(DynamicCache):
    """A DynamicCache (one slot per expert block) plus the routers' running state per layer.

    It also holds the *deferred* inputs of expert blocks that were skipped (no row chose them
    for some tokens): ``(B, t, D)`` target-width hidden states and ``(B, t)`` position ids per
    slot, run through the block (and its in-adapter) the next time it is used, so its KV cache
    is complete when it matters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.router_states: dict[int, dict[str, torch.Tensor]] = {}
        # per slot: chunks of (hidden (B, t, d), position ids (B, t)), joined when taken
        self.deferred: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def defer(self, slot: int, hidden: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Keep block ``slot``'s inputs for tokens it did not run on."""
        chunk = (hidden, position_ids.expand(hidden.shape[0], -1))
        self.deferred.setdefault(slot, []).append(chunk)

    def take_deferred(self, slot: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Block ``slot``'s deferred inputs, joined (and removed from the cache), or None."""
        chunks = self.deferred.pop(slot, None)
        if chunks is None:
            return None
        return torch.cat([h for h, _ in chunks], 1), torch.cat([p for _, p in chunks], 1)

    def seen_tokens(self, slot: int = 0) -> int:
        """Tokens processed so far: block ``slot``'s cache length plus its deferred tokens."""
        pending = sum(h.shape[1] for h, _ in self.deferred.get(slot, ()))
        return self.get_seq_length(slot) + pending

    def _map_states(self, fn) -> None:
        self.router_states = {
            layer: {k: fn(v) for k, v in state.items()}
            for layer, state in self.router_states.items()
        }
        self.deferred = {
            slot: [(fn(h), fn(p)) for h, p in chunks] for slot, chunks in self.deferred.items()
        }

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch (beam search), router states included."""
        super().reorder_cache(beam_idx)
        self._map_states(lambda v: v.index_select(0, beam_idx.to(v.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times, router states included."""
        super().batch_repeat_interleave(repeats)
        self._map_states(lambda v: v.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the given batch rows, router states included."""
        super().batch_select_indices(indices)
        self._map_states(lambda v: v[indices])


class MoLHFConfig(PretrainedConfig):
    """transformers config of a fused model: sizes the generation utilities read."""

    model_type = "mol_fusion"

    def __init__(
        self,
        vocab_size: int = 0,
        hidden_size: int = 0,
        num_hidden_layers: int = 0,
        mol: dict | None = None,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.mol = mol or {}
        super().__init__(**kwargs)


class MoLForCausalLM(PreTrainedModel, GenerationMixin):
    """A built MoL runtime behind the transformers causal-LM interface."""

    config_class = MoLHFConfig
    base_model_prefix = "runtime"
    _supports_cache_class = True

    def __init__(self, config: MoLHFConfig, runtime=None) -> None:
        super().__init__(config)
        if runtime is None:
            raise ValueError("MoLForCausalLM wraps a MoLRuntime: pass runtime=")
        self.runtime = runtime

    @classmethod
    def from_pretrained(cls, path, *args, allow_changed_sources: bool = False, **kwargs):
        """Rebuild from a MoL checkpoint directory (``MoLRuntime.save_checkpoint`` or
        :meth:`save_pretrained`); other ``from_pretrained`` options do not apply."""
        from mol.fusion.runtime import MoLRuntime

        # AutoModelForCausalLM passes its own bookkeeping (config, revision, adapter_kwargs...)
        ignored = {
            "config",
            "revision",
            "adapter_kwargs",
            "trust_remote_code",
            "dtype",
            "torch_dtype",
            "_from_auto",
            "_commit_hash",
        }
        unused = {k for k, v in kwargs.items() if k not in ignored and v is not None}
        if args or unused:
            raise TypeError(
                f"MoLForCausalLM.from_pretrained takes a path only, got {sorted(unused)}"
            )
        return MoLRuntime.load_checkpoint(
            path, allow_changed_sources=allow_changed_sources
        ).as_hf_model()

    def save_pretrained(self, save_directory, *, include_experts: bool = False, **kwargs) -> None:
        """Write a MoL checkpoint (replacing ``save_directory``), loadable by ``from_pretrained``."""
        self.runtime.save_checkpoint(
            save_directory, include_experts=include_experts, overwrite=True
        )

    @property
    def device(self) -> torch.device:
        """Where inputs go: the token embeddings' device (also when dispatched)."""
        return self.runtime._input_device()

    def get_input_embeddings(self) -> torch.nn.Module:
        """The primary model's token embeddings."""
        return self.runtime.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Module:
        """The primary model's LM head."""
        return self.runtime.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits ``(B, T, V)`` (and the loss with ``labels``); the usual causal-LM contract."""
        if input_ids is None:
            raise ValueError("MoLForCausalLM needs input_ids")
        if use_cache and past_key_values is None:
            past_key_values = MoLCache()
        if past_key_values is not None and not isinstance(past_key_values, MoLCache):
            if past_key_values.get_seq_length() != 0:
                raise TypeError(
                    "a MoL model needs its own MoLCache; got a filled "
                    f"{type(past_key_values).__name__}"
                )
            past_key_values = MoLCache()
        hidden = self.runtime.hidden_states(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values=past_key_values,
            use_cache=bool(use_cache),
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.runtime.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None
        )


AutoConfig.register(MoLHFConfig.model_type, MoLHFConfig)
AutoModelForCausalLM.register(MoLHFConfig, MoLForCausalLM)

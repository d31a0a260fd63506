"""The MoL runtime: the primary model's embeddings and head around a stack of fused layers.

The first model in ``MoLConfig.models`` is the *primary*: its tokenizer, token (and absolute
position) embeddings, final norm and LM head drive everything, and the target hidden width is
its width unless ``target_hidden_dim`` says otherwise (then the embeddings and the head are
bridged by norm-preserving adapters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mol._errors import ConfigError, UnsupportedArchitectureError
from mol.arch import ArchitectureInfo, detect_architecture, resolve_module
from mol.fusion.adapters import BottleneckAdapter, LinearAdapter
from mol.fusion.blocks import BlockExtractor
from mol.fusion.layer import FusedLayer
from mol.fusion.routers import RouterOutput, SimpleRouter, TokenLevelRouter
from mol.io import load_causal_lm, load_tokenizer

__all__ = ["MoLConfig", "MoLRuntime"]

logger = logging.getLogger("mol")

_AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class MoLConfig:
    """What to fuse and how (the seed tutorial's ``MoLConfig``).

    Attributes:
        models: model references (hub ids or local directories); the first is the primary.
        adapter_type: ``linear`` or ``bottleneck`` adapters between widths.
        router_type: ``simple`` (causal pooled, per sequence prefix) or ``token_level``.
        max_layers: refuse ``add_layer`` beyond this many fused layers (None: no limit).
        memory_efficient: keep no source model in memory between ``add_layer`` calls (each
            call reloads what it needs and releases it after taking its blocks).
        temperature: router temperature.
        top_k_experts: experts kept per position (None: all, renormalised).
        target_hidden_dim: width of the fused stack (None: the primary's).
        bottleneck_dim: width of bottleneck adapters' residual path.
        pooling_type: the simple router's causal pooling (``mean``, ``max``, ``last``).
        noise_std: token-level router noise in training.
        trust_remote_code: allow models' own Python code (off by default).
        device_map: hand placement to accelerate once set-up is over (the first forward):
            ``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of module name -> device
            (``"cpu"``, ``"cuda:0"``, ``"disk"``...); see :meth:`MoLRuntime.dispatch`.
        max_memory: per-device memory budget for ``device_map="auto"`` (accelerate's form).
        offload_folder: where modules mapped to ``"disk"`` are kept.
    """

    models: list[str]
    adapter_type: Literal["linear", "bottleneck"] = "linear"
    router_type: Literal["simple", "token_level"] = "simple"
    max_layers: int | None = None
    memory_efficient: bool = False
    temperature: float = 1.0
    top_k_experts: int | None = None
    target_hidden_dim: int | None = None
    bottleneck_dim: int = 64
    pooling_type: str = "mean"
    noise_std: float = 0.0
    trust_remote_code: bool = False
    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models: give at least one model")
        if self.adapter_type not in ("linear", "bottleneck"):
            raise ConfigError(
                f"adapter_type must be 'linear' or 'bottleneck', got {self.adapter_type!r}"
            )
        if self.router_type not in ("simple", "token_level"):
            raise ConfigError(
                f"router_type must be 'simple' or 'token_level', got {self.router_type!r}"
            )
        if self.max_layers is not None and self.max_layers < 1:
            raise ConfigError(f"max_layers must be >= 1, got {self.max_layers}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if isinstance(self.device_map, str) and self.device_map not in _AUTO_MAPS:
            raise ConfigError(
                f"device_map must be a dict or one of {', '.join(_AUTO_MAPS)}, "
                f"got {self.device_map!r}"
            )
        if self.extra:
            raise ConfigError(f"unknown MoLConfig options: {sorted(self.extra)}")


class MoLRuntime(nn.Module):
    """Fuse layers of several causal LMs into one network (see the module docstring).

    Typical use (the seed tutorial)::

        mol = MoLRuntime(MoLConfig(models=[primary, partner]))
        mol.setup_embeddings(); mol.setup_lm_head()
        mol.add_layer([(primary, 0), (partner, 0)], layer_idx=0)
        hidden, stats = mol.forward(ids, mask, return_router_stats=True)
    """

    def __init__(self, config: MoLConfig, *, _offline_sources: dict | None = None) -> None:
        super().__init__()
        self.config = config
        # a self-contained checkpoint rebuilds sources from saved configs, without weights
        self._offline = _offline_sources
        self.infos: dict[str, ArchitectureInfo] = {
            m: detect_architecture(self._where(m), trust_remote_code=config.trust_remote_code)
            for m in config.models
        }
        self.primary = config.models[0]
        primary = self.infos[self.primary]
        if primary.architecture_family != "decoder-only":
            raise UnsupportedArchitectureError(
                f"{self.primary}: the primary model must be a decoder-only causal LM, "
                f"got {primary.architecture_family} ({primary.architecture_type})"
            )
        self.target_hidden_dim = config.target_hidden_dim or primary.hidden_dim
        self.device_map: dict | None = None  # set by dispatch()
        self.gradient_checkpointing = False  # recompute fused layers in the backward pass
        self._tokenizer = None
        self._sources: dict[str, nn.Module] = {}
        self._next_slot = 0  # every expert block gets its own KV-cache slot
        self._primary_config = None
        self.layers = nn.ModuleList()
        self.embed_tokens: nn.Module | None = None
        self.embed_positions: nn.Module | None = None
        self.embed_in = LinearAdapter(primary.hidden_dim, self.target_hidden_dim)
        self.norm: nn.Module | None = None
        self.lm_head: nn.Module | None = None
        self.head_out = LinearAdapter(self.target_hidden_dim, primary.hidden_dim)

    @property
    def tokenizer(self):
        """The primary model's tokenizer (loaded on first use; warns if partners differ)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(
                self._where(self.primary), trust_remote_code=self.config.trust_remote_code
            )
            self._warn_on_tokenizer_mismatch()
        return self._tokenizer

    # -- set-up ---------------------------------------------------------------------------
    def setup_embeddings(self) -> None:
        """Take the primary's token (and absolute position) embeddings."""
        model, info = self._source(self.primary), self.infos[self.primary]
        self._primary_config = model.config
        self.embed_tokens = self._take(self.primary, info.embedding_path)
        if info.position_embedding_path:
            self.embed_positions = self._take(self.primary, info.position_embedding_path)
        self._release()

    def setup_lm_head(self) -> None:
        """Take the primary's final norm and LM head."""
        info = self.infos[self.primary]
        if info.final_norm_path is None or info.lm_head_path is None:
            raise UnsupportedArchitectureError(f"{self.primary} has no final norm or LM head")
        self.norm = self._take(self.primary, info.final_norm_path)
        self.lm_head = self._take(self.primary, info.lm_head_path)
        if info.tied_embeddings and self.embed_tokens is not None:
            self.lm_head.weight = self.embed_tokens.weight  # tied, as in the primary
        self._release()

    def add_layer(self, experts: list[tuple[str, int]], layer_idx: int | None = None) -> FusedLayer:
        """Add a fused layer whose experts are ``(model, layer index)`` pairs.

        ``layer_idx`` is the position in the fused stack (default: append); it must be the
        next free position. Raises ConfigError for an unknown model or a full stack, and
        UnsupportedArchitectureError for a bad layer index or an unsupported family.
        """
        position = len(self.layers) if layer_idx is None else layer_idx
        if position != len(self.layers):
            raise ConfigError(
                f"layer_idx {layer_idx}: layers are added in order; next is {len(self.layers)}"
            )
        if self.config.max_layers is not None and position >= self.config.max_layers:
            raise ConfigError(
                f"max_layers is {self.config.max_layers}; cannot add layer {position}"
            )
        if not experts:
            raise ConfigError("add_layer needs at least one (model, layer) pair")
        blocks, ins, outs = [], [], []
        for i, (name, index) in enumerate(experts):
            if name not in self.infos:
                raise ConfigError(
                    f"model {name!r} is not in MoLConfig.models ({', '.join(self.infos)})"
                )
            BlockExtractor.check(self.infos[name], name)  # before loading any weights
            extractor = BlockExtractor(self._source(name), self.infos[name], name)
            block = extractor.extract(index, materialise=self._materialiser(name))
            block.set_cache_slot(self._next_slot)
            self._next_slot += 1
            blocks.append(block)
            ins.append(self._adapter(self.target_hidden_dim, block.hidden_dim, seed=2 * i))
            outs.append(self._adapter(block.hidden_dim, self.target_hidden_dim, seed=2 * i + 1))
        self._release()
        layer = FusedLayer(blocks, ins, outs, self._router(len(blocks), seed=position))
        self.layers.append(layer)
        return layer

    # -- running ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_router_stats: bool = False,
        position_ids: torch.Tensor | None = None,
    ):
        """Final hidden states ``(B, T, d_primary)`` after the primary's final norm.

        Returns ``(hidden, router_stats)`` when ``return_router_stats`` (per layer:
        ``expert_weights (E,)`` mean over real tokens, ``entropy``, ``token_weights (B, T, E)``,
        ``load_balancing_loss``, ``z_loss``), else ``hidden``.
        """
        hidden, routings = self._run(input_ids, attention_mask, position_ids)
        if not return_router_stats:
            return hidden
        stats = {
            i: {
                "expert_weights": r.expert_weights().detach(),
                "entropy": r.entropy().detach(),
                "token_weights": r.weights.detach(),
                "load_balancing_loss": r.load_balancing_loss().detach(),
                "z_loss": r.z_loss().detach(),
            }
            for i, r in enumerate(routings)
        }
        return hidden, stats

    def compute_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``(B, T, V)``."""
        if self.lm_head is None:
            raise ConfigError("call setup_lm_head() first")
        return self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids))

    def logits_and_routing(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[RouterOutput]]:
        """Logits ``(B, T, V)`` and every layer's :class:`RouterOutput`, with gradients
        (what training needs: the auxiliary losses are computed from the routings)."""
        if self.lm_head is None:
            raise ConfigError("call setup_lm_head() first")
        hidden, routings = self._run(input_ids, attention_mask, None)
        return self.lm_head(hidden), routings

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
    ) -> torch.Tensor:
        """Final hidden states, optionally continuing from (and filling) a ``MoLCache``."""
        return self._run(input_ids, attention_mask, position_ids, past_key_values, use_cache)[0]

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **generation_kwargs,
    ) -> torch.Tensor:
        """transformers' ``generate`` (greedy, sampling, beams, ``max_new_tokens``, ``top_p``,
        ``no_repeat_ngram_size``, ...) with a KV cache across the fused blocks."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tok = self._tokenizer
        defaults = {}
        if tok is not None and tok.pad_token_id is not None:
            defaults["pad_token_id"] = tok.pad_token_id
        return self.as_hf_model().generate(
            input_ids=input_ids, attention_mask=attention_mask, **{**defaults, **generation_kwargs}
        )

    def as_hf_model(self):
        """This runtime behind transformers' causal-LM interface (``MoLForCausalLM``)."""
        from mol.fusion.hf import MoLForCausalLM, MoLHFConfig

        if self.lm_head is None:
            raise ConfigError("call setup_lm_head() first")
        primary = self.infos[self.primary]
        source_config = self._primary_config
        config = MoLHFConfig(
            vocab_size=primary.vocab_size,
            hidden_size=self.target_hidden_dim,
            num_hidden_layers=len(self.layers),
            bos_token_id=getattr(source_config, "bos_token_id", None),
            eos_token_id=getattr(source_config, "eos_token_id", None),
            pad_token_id=getattr(source_config, "pad_token_id", None),
        )
        model = MoLForCausalLM(config, runtime=self)
        model.eval() if not self.training else model.train()
        return model

    def _run(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=False):
        if self.embed_tokens is None or self.norm is None:
            raise ConfigError("call setup_embeddings() and setup_lm_head() before running")
        if not len(self.layers):
            raise ConfigError("no fused layers: call add_layer() first")
        self._sources.clear()  # set-up is over: keep only the blocks, embeddings and head
        if self.config.device_map is not None and self.device_map is None:
            self.dispatch(
                self.config.device_map, self.config.max_memory, self.config.offload_folder
            )
        input_ids = input_ids.to(self._input_device())
        if attention_mask is not None:
            attention_mask = attention_mask.to(input_ids.device)
        if position_ids is not None:
            position_ids = position_ids.to(input_ids.device)
        if past_key_values is not None:
            from mol.fusion.hf import MoLCache

            if not isinstance(past_key_values, MoLCache):
                raise TypeError(
                    f"a MoL runtime needs a MoLCache, got {type(past_key_values).__name__}"
                )
        past = past_key_values.seen_tokens(0) if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(
                input_ids.shape[0],
                past + input_ids.shape[1],
                dtype=torch.long,
                device=input_ids.device,
            )
        if position_ids is None:  # as the source models do: no padding offset
            position_ids = (
                torch.arange(input_ids.shape[1], device=input_ids.device) + past
            ).unsqueeze(0)
        hidden = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        hidden = self.embed_in(hidden)
        states = getattr(past_key_values, "router_states", None)
        routings = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        shared: dict = {}  # masks and rotary embeddings blocks can share in this pass
        for i, layer in enumerate(self.layers):
            if recompute and past_key_values is None:
                hidden, routing = checkpoint(
                    layer, hidden, attention_mask, position_ids, use_reentrant=False
                )
                routings.append(routing)
                continue
            hidden, routing = layer(
                hidden,
                attention_mask,
                position_ids,
                past_key_values,
                use_cache,
                router_state=None if states is None else states.get(i),
                shared=shared,
            )
            if states is not None and use_cache and routing.state is not None:
                states[i] = routing.state
            routings.append(routing)
        return self.norm(self.head_out(hidden)), routings

    def dispatch(
        self,
        device_map: str | dict = "auto",
        max_memory: dict | None = None,
        offload_folder: str | None = None,
    ) -> dict:
        """Place the built runtime across devices with accelerate (call after set-up).

        ``device_map`` is ``"auto"`` / ``"balanced"`` / ``"balanced_low_0"`` /
        ``"sequential"`` (accelerate infers a map within ``max_memory``, never splitting a
        fused layer) or an explicit dict of module name -> device, where ``"disk"`` offloads
        to ``offload_folder``. Inputs move to each module's device as it runs. Returns the map.
        """
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        if not len(self.layers) or self.embed_tokens is None or self.lm_head is None:
            raise ConfigError("dispatch() places a built runtime: set it up and add layers first")
        if self.device_map is not None:
            raise ConfigError("this runtime is already dispatched")
        if isinstance(device_map, str):
            if device_map not in _AUTO_MAPS:
                raise ConfigError(
                    f"device_map must be a dict or one of {', '.join(_AUTO_MAPS)}, "
                    f"got {device_map!r}"
                )
            keep = ["FusedLayer"]
            if device_map.startswith("balanced"):
                max_memory = get_balanced_memory(
                    self,
                    max_memory=max_memory,
                    no_split_module_classes=keep,
                    low_zero=device_map == "balanced_low_0",
                )
            device_map = infer_auto_device_map(
                self, max_memory=max_memory, no_split_module_classes=keep
            )
        names = {n for n, _ in self.named_modules()}
        unknown = sorted(k for k in device_map if k and k not in names)
        if unknown:
            raise ConfigError(f"device_map names modules this runtime does not have: {unknown}")
        if "disk" in device_map.values() and offload_folder is None:
            raise ConfigError("device_map offloads to 'disk': give offload_folder")
        self._sources.clear()
        dispatch_model(self, device_map=device_map, offload_dir=offload_folder)
        self.device_map = dict(device_map)
        return self.device_map

    def _input_device(self) -> torch.device:
        """Where token ids go: the device the token embeddings run on."""
        hook = getattr(self.embed_tokens, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        return torch.device(device) if device is not None else self.embed_tokens.weight.device

    # -- helpers ----------------------------------------------------------------------------
    def _where(self, name: str):
        return self._offline[name] if self._offline else name

    def source_config(self, name: str):
        """The transformers config of source model ``name``."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(
            self._where(name), trust_remote_code=self.config.trust_remote_code
        )

    def config_dict(self) -> dict:
        """The :class:`MoLConfig` as a JSON-serialisable dict."""
        import dataclasses

        data = dataclasses.asdict(self.config)
        data.pop("extra")
        return data

    def save_checkpoint(
        self,
        path,
        use_safetensors: bool = True,
        include_experts: bool = False,
        overwrite: bool = False,
    ):
        """Save the recipe and trainable weights (see :mod:`mol.fusion.checkpoint`)."""
        from mol.fusion.checkpoint import save_checkpoint

        return save_checkpoint(
            self,
            path,
            use_safetensors=use_safetensors,
            include_experts=include_experts,
            overwrite=overwrite,
        )

    @classmethod
    def load_checkpoint(cls, path, allow_changed_sources: bool = False) -> MoLRuntime:
        """Rebuild a runtime saved with :meth:`save_checkpoint` (identical logits)."""
        from mol.fusion.checkpoint import load_checkpoint

        return load_checkpoint(path, allow_changed_sources=allow_changed_sources)

    def _source(self, name: str) -> nn.Module:
        if name not in self._sources and self.config.memory_efficient and not self._offline:
            from mol.fusion._lazy import meta_skeleton

            self._sources[name] = meta_skeleton(self.source_config(name))
        if name not in self._sources and self._offline:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(self.source_config(name)).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._sources[name] = model
        if name not in self._sources:
            model = load_causal_lm(name, trust_remote_code=self.config.trust_remote_code)
            for p in model.parameters():
                p.requires_grad_(False)  # experts, embeddings and head stay frozen
            self._sources[name] = model
        return self._sources[name]

    def _release(self) -> None:
        if self.config.memory_efficient:
            self._sources.clear()

    def _take(self, name: str, path: str) -> nn.Module:
        """A module of source ``name`` (materialised from its checkpoint when lazy)."""
        module = resolve_module(self._source(name), path)
        materialise = self._materialiser(name)
        if materialise is not None:
            materialise(module, path + ".")
        return module

    def _materialiser(self, name: str):
        """With ``memory_efficient``, a function that fills a meta module from the checkpoint."""
        if not self.config.memory_efficient or self._offline:
            return None
        from mol.fusion._lazy import materialise_from_checkpoint

        info = self.infos[name]
        return lambda module, prefix: materialise_from_checkpoint(
            module, prefix, name, info, trust_remote_code=self.config.trust_remote_code
        )

    def _adapter(self, in_dim: int, out_dim: int, seed: int) -> nn.Module:
        if self.config.adapter_type == "bottleneck":
            return BottleneckAdapter(in_dim, out_dim, self.config.bottleneck_dim, seed=seed)
        return LinearAdapter(in_dim, out_dim, seed=seed)

    def _router(self, num_experts: int, seed: int) -> nn.Module:
        router = self._new_router(num_experts)
        with torch.no_grad():  # seeded, so a runtime is rebuilt identically from its recipe
            router.gate.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
        return router

    def _new_router(self, num_experts: int) -> nn.Module:
        c = self.config
        if c.router_type == "token_level":
            return TokenLevelRouter(
                self.target_hidden_dim,
                num_experts,
                top_k=c.top_k_experts,
                temperature=c.temperature,
                noise_std=c.noise_std,
            )
        return SimpleRouter(
            self.target_hidden_dim,
            num_experts,
            pooling_type=c.pooling_type,
            top_k=c.top_k_experts,
            temperature=c.temperature,
        )

    def _warn_on_tokenizer_mismatch(self) -> None:
        reference = self._tokenizer.get_vocab()
        for name in self.config.models[1:]:
            try:
                other = load_tokenizer(
                    self._where(name), trust_remote_code=self.config.trust_remote_code
                )
            except OSError:
                logger.warning(
                    "%s has no tokenizer; %s's tokenizer drives the fusion", name, self.primary
                )
                continue
            if other.get_vocab() != reference:
                logger.warning(
                    "tokenizers differ: %s and %s; %s's tokenizer and embeddings "
                    "drive every fused layer",
                    self.primary,
                    name,
                    self.primary,
                )

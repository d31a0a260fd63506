"""The gating-network MoE as a transformers causal LM.

Attention, norms, embeddings and the LM head come from the first expert; every feed-forward
block becomes a :class:`MixtureMLP` over the experts' own feed-forward blocks, weighted by
the gating network's probabilities for the current prompt. The probabilities are per batch
row ``(B, E)`` and computed once per prompt:

* a forward pass without ``gate_probs`` and without a filled cache routes each row by its own
  tokens (so the perplexity of fixed blocks treats every block as a prompt);
* :meth:`MoEModel.generate` routes by the prompt and passes the same ``gate_probs`` to every
  step, with or without a KV cache, so the cache stays valid and the two agree;
* a manual forward with a filled cache reuses the probabilities stored on the cache at prefill.

``save_pretrained`` writes ``config.json`` (model type ``mol_gated_moe``), one
``model.safetensors`` (shared weights, every expert's feed-forward weights, the feature
encoder and the gating network) and the tokenizer; ``from_pretrained`` rebuilds the model
from those files alone.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)

from mol._errors import (
    CheckpointMismatchError,
    ConfigError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
    closest_match_hint,
)
from mol.moe.gating.features import FeatureEncoder, build_feature_encoder
from mol.moe.gating.network import GatingNetwork, load_gating_network

__all__ = ["ROUTING_MODES", "MixtureMLP", "MoEConfig", "MoEModel"]

logger = logging.getLogger("mol")

RoutingMode = Literal["weighted_sum", "select_one"]
ROUTING_MODES: tuple[str, ...] = ("weighted_sum", "select_one")
_WEIGHTS = "model.safetensors"
_MLP_ATTR = "mlp"


def _check_mode(mode: str) -> str:
    if mode not in ROUTING_MODES:
        raise ConfigError(
            f"routing_mode must be one of {', '.join(ROUTING_MODES)}, got {mode!r}"
            f"{closest_match_hint(str(mode), ROUTING_MODES)}"
        )
    return mode


class _Routing:
    """Routing state shared by every MixtureMLP of one model: mode and the current weights."""

    def __init__(self, mode: str) -> None:
        self.mode = _check_mode(mode)
        self.weights: torch.Tensor | None = None


class MixtureMLP(nn.Module):
    """A mixture of feed-forward blocks: ``(B, T, D) -> (B, T, D)``.

    ``weighted_sum``: ``sum_e w[b, e] * expert_e(x[b])`` (experts whose weight is zero for
    every row are skipped). ``select_one``: each row goes through its argmax expert only, with
    weight 1. The weights ``(B, E)`` are read from the shared routing state, set by
    :meth:`MoEModel.forward` for the duration of one pass.
    """

    def __init__(self, experts: list[nn.Module], routing: _Routing) -> None:
        super().__init__()
        if len(experts) < 2:
            raise ConfigError(f"a mixture needs >= 2 experts, got {len(experts)}")
        self.experts = nn.ModuleList(experts)
        self._routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix the experts' outputs for ``x`` ``(B, T, D)`` by the current gate weights."""
        weights = self._routing.weights
        if weights is None:
            raise RuntimeError("MixtureMLP has no gate weights: call it through MoEModel.forward")
        if weights.shape != (x.shape[0], len(self.experts)):
            raise ValueError(
                f"gate weights {tuple(weights.shape)} do not fit a batch of {x.shape[0]} rows "
                f"and {len(self.experts)} experts"
            )
        if self._routing.mode == "select_one":
            return self._select_one(x, weights.argmax(dim=-1))
        out = None
        shape = (-1,) + (1,) * (x.ndim - 1)
        for e, expert in enumerate(self.experts):
            w = weights[:, e]
            if not torch.any(w):
                continue
            y = w.to(x.dtype).view(shape) * expert(x)
            out = y if out is None else out + y
        if out is None:
            raise ValueError("every gate weight is zero: nothing to mix")
        return out

    def _select_one(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        chosen = choice.unique().tolist()
        if len(chosen) == 1:
            return self.experts[chosen[0]](x)
        out = None
        for e in chosen:
            rows = (choice == e).nonzero().squeeze(1)
            y = self.experts[e](x.index_select(0, rows))
            if out is None:
                out = y.new_zeros((x.shape[0],) + tuple(y.shape[1:]))
            out.index_copy_(0, rows, y)
        return out


class MoEConfig(PretrainedConfig):
    """transformers config of a gating-network MoE.

    Attributes:
        text_config: the first expert's config (the shared model's shape).
        gate_encoder_config: the base model's config truncated to ``feature_layer`` blocks.
        num_experts, routing_mode, feature_layer: as named.
        gate_max_length: tokens of a prompt the gate pools (as in its training).
        layers_path: the block list in the causal LM (``"model.layers"``).
        encoder_layers_path: the block list in the feature encoder's backbone (``"layers"``).
        gate: the gating network's constructor arguments.
        lm_dtype, encoder_dtype: parameter dtypes restored on load.
        experts: where the experts came from (informational only; never read on load).
    """

    model_type = "mol_gated_moe"
    sub_configs = {"text_config": AutoConfig, "gate_encoder_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        gate_encoder_config: dict | PretrainedConfig | None = None,
        num_experts: int = 2,
        routing_mode: str = "weighted_sum",
        feature_layer: int = 0,
        gate_max_length: int = 256,
        layers_path: str = "model.layers",
        encoder_layers_path: str = "layers",
        gate: dict | None = None,
        lm_dtype: str = "float32",
        encoder_dtype: str = "float32",
        experts: list[str] | None = None,
        **kwargs,
    ) -> None:
        self.text_config = _as_config(text_config)
        self.gate_encoder_config = _as_config(gate_encoder_config)
        self.num_experts = num_experts
        self.routing_mode = _check_mode(routing_mode)
        self.feature_layer = feature_layer
        self.gate_max_length = gate_max_length
        self.layers_path = layers_path
        self.encoder_layers_path = encoder_layers_path
        self.gate = gate or {}
        self.lm_dtype = lm_dtype
        self.encoder_dtype = encoder_dtype
        self.experts = list(experts or [])
        if self.text_config is not None:
            for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
                kwargs.setdefault(name, getattr(self.text_config, name, None))
            for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
                kwargs.setdefault(name, getattr(self.text_config, name, None))
        super().__init__(**kwargs)


def _as_config(value):
    if value is None or isinstance(value, PretrainedConfig):
        return value
    values = dict(value)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _dtype_name(module: nn.Module) -> str:
    return str(next(module.parameters()).dtype).removeprefix("torch.")


class MoEModel(PreTrainedModel, GenerationMixin):
    """FFN experts of one base mixed per prompt by a trained gating network.

    Build it from parts (the experts' directories and a trained gate)::

        MoEModel(expert_paths=[code_dir, prose_dir], gating_model_path=gate_dir)
        MoEModel(model1_path=a, model2_path=b, gating_model_path=gate_dir)

    or load a saved one with ``MoEModel.from_pretrained(dir)`` (or
    ``AutoModelForCausalLM.from_pretrained(dir)`` once :mod:`mol.moe.gating` is imported).

    Args:
        config: a :class:`MoEConfig` (builds an empty model of that shape; used by loading).
        expert_paths: expert model directories / hub ids, in the gate's class order.
        model1_path, model2_path: the two-expert spelling of ``expert_paths``.
        gating_model_path: directory written by ``mol gate train`` (``best_model.safetensors``
            + ``training_info.json``) or a gate ``.safetensors`` file.
        base_model_path: the gate's feature model; default the one recorded at training.
        routing_mode: ``"weighted_sum"`` or ``"select_one"``.
        device: where to put the model.

    Raises:
        ConfigError: a bad routing mode, or the gate does not fit the experts.
        UnsupportedArchitectureError: experts of different shapes, or blocks without ``mlp``.
    """

    config_class = MoEConfig
    base_model_prefix = "lm"
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(
        self,
        config: MoEConfig | None = None,
        *,
        expert_paths: list[str | os.PathLike] | None = None,
        model1_path: str | os.PathLike | None = None,
        model2_path: str | os.PathLike | None = None,
        gating_model_path: str | os.PathLike | None = None,
        base_model_path: str | os.PathLike | None = None,
        routing_mode: RoutingMode = "weighted_sum",
        device: torch.device | str | None = None,
    ) -> None:
        if config is not None:
            if expert_paths or model1_path or model2_path or gating_model_path or base_model_path:
                raise TypeError("pass either config= or the expert / gate paths, not both")
            super().__init__(config)
            self._build_empty(config)
        else:
            parts = _load_parts(
                _expert_list(expert_paths, model1_path, model2_path),
                gating_model_path,
                base_model_path,
                routing_mode,
            )
            super().__init__(parts.pop("config"))
            self._attach(**parts)
        if device is not None:
            self.to(device)
        self.eval()

    # ---- construction -------------------------------------------------------------------

    def _attach(self, lm, expert_mlps, encoder, gate, tokenizer) -> None:
        self._routing = _Routing(self.config.routing_mode)
        blocks = _blocks(lm, self.config.layers_path)
        for i, block in enumerate(blocks):
            mlps = [getattr(block, _MLP_ATTR)] + [layer_mlps[i] for layer_mlps in expert_mlps]
            setattr(block, _MLP_ATTR, MixtureMLP(mlps, self._routing))
        self.lm = lm
        self.gate_encoder = encoder
        self.gate = gate
        self.tokenizer = tokenizer

    def _build_empty(self, config: MoEConfig) -> None:
        lm = AutoModelForCausalLM.from_config(config.text_config)
        lm.to(getattr(torch, config.lm_dtype))
        blocks = _blocks(lm, config.layers_path)
        others = [
            [copy.deepcopy(getattr(b, _MLP_ATTR)) for b in blocks]
            for _ in range(config.num_experts - 1)
        ]
        backbone = AutoModel.from_config(config.gate_encoder_config)
        backbone.to(getattr(torch, config.encoder_dtype))
        encoder = FeatureEncoder(
            backbone, config.feature_layer, config.encoder_layers_path, config.gate_max_length
        )
        gate = GatingNetwork(**config.gate)
        self._attach(lm, others, encoder, gate, None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> MoEModel:
        """Rebuild a model written by :meth:`save_pretrained` from those files only.

        Accepts ``device=``, ``dtype=`` (the language model and feature encoder; the gate stays
        float32) and ``routing_mode=`` (overrides the saved mode); the bookkeeping keywords
        ``AutoModelForCausalLM`` passes are ignored, anything else is an error.

        Raises:
            ModelNotFoundError: no such directory or no ``model.safetensors`` in it.
            CheckpointMismatchError: the weights do not fit the saved config.
        """
        from mol.io import load_model_safe

        device = kwargs.pop("device", None)
        routing_mode = kwargs.pop("routing_mode", None)
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        ignored = {
            "config",
            "revision",
            "adapter_kwargs",
            "trust_remote_code",
            "_from_auto",
            "_commit_hash",
            "use_safetensors",
        }
        unused = sorted(k for k, v in kwargs.items() if k not in ignored and v is not None)
        if args or unused:
            raise TypeError(f"MoEModel.from_pretrained takes a directory only; got {unused}")
        path = Path(pretrained_model_name_or_path)
        if not (path / _WEIGHTS).is_file() or not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a saved MoEModel (needs config.json and {_WEIGHTS})"
            )
        config = MoEConfig.from_pretrained(path)
        if config.model_type != MoEConfig.model_type:
            raise CheckpointMismatchError(f"{path} holds a {config.model_type!r} model")
        model = cls(config)
        load_model_safe(model, path / _WEIGHTS)
        if any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            from mol.io import load_tokenizer

            model.tokenizer = load_tokenizer(path)
        if routing_mode is not None:
            model.routing_mode = routing_mode
        if dtype is not None and dtype != "auto":  # the gating network stays float32
            dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            model.lm.to(dtype)
            model.gate_encoder.to(dtype)
        if device is not None:
            model.to(device)
        return model.eval()

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write config, weights (safetensors) and tokenizer to ``save_directory``, atomically,
        replacing what is there. Options of transformers' ``save_pretrained`` do not apply."""
        from mol.io import atomic_output_dir, save_model_safe

        unused = sorted(k for k, v in kwargs.items() if v is not None)
        if unused:
            raise TypeError(f"MoEModel.save_pretrained takes a directory only; got {unused}")
        with atomic_output_dir(save_directory, overwrite=True) as tmp:
            self.config.save_pretrained(tmp)
            save_model_safe(self, tmp / _WEIGHTS, {"format": MoEConfig.model_type})
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)

    # ---- routing ------------------------------------------------------------------------

    @property
    def routing_mode(self) -> str:
        """``"weighted_sum"`` or ``"select_one"``; settable."""
        return self._routing.mode

    @routing_mode.setter
    def routing_mode(self, mode: str) -> None:
        self._routing.mode = _check_mode(mode)
        self.config.routing_mode = mode

    @property
    def num_experts(self) -> int:
        """Number of experts ``E``."""
        return self.config.num_experts

    @torch.no_grad()
    def gate_probs_for(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gate probabilities ``(B, E)`` float32 for prompts ``input_ids`` ``(B, T)``."""
        return self.gate.probs(self.gate_encoder(input_ids, attention_mask))

    def get_gating_probs(self, text: str | list[str]) -> torch.Tensor:
        """Gate probabilities for a prompt text: ``(E,)`` for a str, ``(B, E)`` for a list.

        Raises:
            ConfigError: the model has no tokenizer.
        """
        if self.tokenizer is None:
            raise ConfigError("this MoEModel has no tokenizer: pass token ids to gate_probs_for")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        batch = self.tokenizer(
            [text] if isinstance(text, str) else list(text), padding=True, return_tensors="pt"
        )
        device = self.device
        probs = self.gate_probs_for(
            batch["input_ids"].to(device), batch["attention_mask"].to(device)
        )
        return probs[0] if isinstance(text, str) else probs

    # ---- transformers interface ---------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        """The shared token embeddings."""
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        """The shared LM head."""
        return self.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        gate_probs: torch.Tensor | None = None,
        **kwargs,
    ):
        """The causal-LM forward (``CausalLMOutputWithPast``, logits ``(B, T, V)``).

        Args:
            gate_probs: ``(B, E)`` routing weights; without them they come from the cache
                (filled at prefill) or, for a fresh pass, from ``input_ids`` and
                ``attention_mask`` row by row.
            Others: as for the first expert's causal LM.
        """
        filled = past_key_values is not None and past_key_values.get_seq_length() > 0
        if gate_probs is None:
            gate_probs = getattr(past_key_values, "mol_gate_probs", None) if filled else None
        if gate_probs is None:
            if filled:
                raise ValueError(
                    "a filled cache without stored gate probabilities: pass gate_probs="
                )
            if input_ids is None:
                raise ValueError("MoEModel routes by input_ids: pass input_ids or gate_probs=")
            gate_probs = self.gate_probs_for(input_ids, attention_mask)
        self._routing.weights = gate_probs
        try:
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        finally:
            self._routing.weights = None
        if out.past_key_values is not None:
            out.past_key_values.mol_gate_probs = gate_probs
        return out

    @torch.no_grad()
    def generate(self, inputs=None, gate_probs: torch.Tensor | None = None, **kwargs):
        """transformers' ``generate`` (all its options), routed by the prompt.

        The gate probabilities are computed once from the prompt (``inputs`` / ``input_ids``
        and ``attention_mask``) unless given, and held fixed for every generated token.
        """
        if gate_probs is None:
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
            if prompt is None:
                raise ValueError("MoEModel.generate needs the prompt's input_ids")
            gate_probs = self.gate_probs_for(prompt, kwargs.get("attention_mask"))
        return super().generate(inputs, gate_probs=gate_probs, **kwargs)


def _blocks(lm: nn.Module, layers_path: str) -> nn.ModuleList:
    from mol.arch import resolve_module

    blocks = resolve_module(lm, layers_path)
    for i, block in enumerate(blocks):
        if not isinstance(getattr(block, _MLP_ATTR, None), nn.Module):
            raise UnsupportedArchitectureError(
                f"block {i} of {type(lm).__name__} has no '{_MLP_ATTR}' feed-forward module"
            )
    return blocks


def _expert_list(expert_paths, model1_path, model2_path) -> list[str]:
    if expert_paths is not None and (model1_path is not None or model2_path is not None):
        raise ConfigError("pass expert_paths or model1_path/model2_path, not both")
    if expert_paths is None:
        if model1_path is None or model2_path is None:
            raise ConfigError("both model1_path and model2_path are needed (or expert_paths)")
        expert_paths = [model1_path, model2_path]
    paths = [os.fspath(p) for p in expert_paths]
    if len(paths) < 2:
        raise ConfigError(f"a MoE needs >= 2 experts, got {len(paths)}")
    return paths


def _gate_files(gating_model_path) -> tuple[Path, dict]:
    """The gate weights file and its training_info (``{}`` when given a bare file)."""
    if gating_model_path is None:
        raise ConfigError("gating_model_path is required")
    path = Path(gating_model_path)
    if path.is_file():
        return path, {}
    weights = path / "best_model.safetensors"
    if not weights.is_file():
        raise ModelNotFoundError(f"no gating network at {path} (expected {weights.name})")
    info_file = path / "training_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return weights, info


def _load_parts(expert_paths, gating_model_path, base_model_path, routing_mode) -> dict:
    from mol.arch import detect_architecture
    from mol.io import load_causal_lm, load_tokenizer, resolve_model_dir

    _check_mode(routing_mode)
    gate_file, _info = _gate_files(gating_model_path)
    gate, meta = load_gating_network(gate_file)
    feature = meta.get("feature", {})
    if gate.num_experts != len(expert_paths):
        raise ConfigError(
            f"the gate at {gate_file} has {gate.num_experts} classes but "
            f"{len(expert_paths)} experts were given"
        )
    base = base_model_path if base_model_path is not None else feature.get("base_model")
    if base is None:
        raise ConfigError(f"{gate_file} does not record its base model: pass base_model_path")
    base_dir = resolve_model_dir(base)
    layer, max_length = int(feature.get("layer", 0)), int(feature.get("max_length", 256))

    lm = load_causal_lm(expert_paths[0])
    layers_path = detect_architecture(lm.config).layer_path
    blocks = _blocks(lm, layers_path)
    shared = {k: v for k, v in lm.state_dict().items() if f".{_MLP_ATTR}." not in k}
    expert_mlps = []
    for path in expert_paths[1:]:
        other = load_causal_lm(path, dtype=next(lm.parameters()).dtype)
        _check_same_shape(lm, other, expert_paths[0], path)
        differing = [
            k
            for k, v in other.state_dict().items()
            if f".{_MLP_ATTR}." not in k and not torch.equal(v, shared[k])
        ]
        if differing:
            logger.warning(
                "expert %s differs from %s outside the feed-forward blocks (%d tensors, e.g. %s); "
                "the MoE uses the first expert's attention, norms and embeddings",
                path,
                expert_paths[0],
                len(differing),
                ", ".join(differing[:3]),
            )
        expert_mlps.append([getattr(b, _MLP_ATTR) for b in _blocks(other, layers_path)])
        del other

    base_lm = load_causal_lm(base_dir)
    if base_lm.config.vocab_size != lm.config.vocab_size:
        raise ConfigError(
            f"base model {base} has vocabulary {base_lm.config.vocab_size}, experts "
            f"{lm.config.vocab_size}: the gate must read the experts' token ids"
        )
    encoder = build_feature_encoder(base_lm, layer, max_length)
    if encoder.hidden_size != gate.input_dim:
        raise ConfigError(
            f"gate expects features of width {gate.input_dim}, base model {base} gives "
            f"{encoder.hidden_size}"
        )
    tokenizer = _tokenizer(load_tokenizer, base_dir, expert_paths[0])
    config = MoEConfig(
        text_config=lm.config.to_dict(),
        gate_encoder_config=encoder.backbone.config.to_dict(),
        num_experts=len(expert_paths),
        routing_mode=routing_mode,
        feature_layer=layer,
        gate_max_length=max_length,
        layers_path=layers_path,
        encoder_layers_path=encoder.layers_path,
        gate=gate.arch(),
        lm_dtype=_dtype_name(lm),
        encoder_dtype=_dtype_name(encoder),
        experts=list(expert_paths),
    )
    del blocks
    return {
        "config": config,
        "lm": lm,
        "expert_mlps": expert_mlps,
        "encoder": encoder,
        "gate": gate,
        "tokenizer": tokenizer,
    }


def _check_same_shape(a: nn.Module, b: nn.Module, name_a, name_b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    mismatched = [k for k in sa if k not in sb or sa[k].shape != sb[k].shape]
    mismatched += [k for k in sb if k not in sa]
    if mismatched:
        raise UnsupportedArchitectureError(
            f"experts {name_a} and {name_b} differ in shape or tensor names (e.g. "
            f"{', '.join(mismatched[:3])}); a MoE needs fine-tunes of one base"
        )


def _tokenizer(load_tokenizer, base_dir, first_expert):
    """The base model's tokenizer, else the first expert's; None when neither has one.

    When both have one, their vocabularies must agree (the gate reads the experts' ids).
    """
    found = []
    for where in (base_dir, first_expert):
        try:
            found.append(load_tokenizer(where))
        except ModelNotFoundError:
            found.append(None)
    base_tok, expert_tok = found
    both = base_tok is not None and expert_tok is not None
    if both and base_tok.get_vocab() != expert_tok.get_vocab():
        raise ConfigError(
            f"the tokenizers of base model {base_dir} and expert {first_expert} differ"
        )
    return base_tok if base_tok is not None else expert_tok


AutoConfig.register(MoEConfig.model_type, MoEConfig)
AutoModelForCausalLM.register(MoEConfig, MoEModel)

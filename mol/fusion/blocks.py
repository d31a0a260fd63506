"""Expert blocks: one transformer layer taken out of its model, run exactly as its model runs it.

A decoder layer needs more than hidden states: the attention mask in the form its own config's
attention implementation expects (``create_causal_mask`` with that config), and, for rotary
families, ``position_embeddings`` from its own model's rotary module and config. The block
builds both itself from the 2-D padding mask and the position ids, so blocks of different
families can sit side by side in one fused layer.

Encoder blocks (BERT family) attend both ways in their own model; inside the causal stack they
always get an explicit causal mask, so no position ever sees a later one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from mol._errors import UnsupportedArchitectureError
from mol.arch import ArchitectureInfo, resolve_module

__all__ = ["DECODER_FAMILIES", "ENCODER_FAMILIES", "ExpertBlock", "BlockExtractor"]

# Families whose decoder layers take (hidden, attention_mask=, position_ids=, past_key_values=,
# use_cache=, [position_embeddings=]) and whose models add nothing between layers.
DECODER_FAMILIES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})
# Encoder families whose layers take (hidden, attention_mask=, past_key_values=).
ENCODER_FAMILIES = frozenset({"bert", "roberta"})


class ExpertBlock(nn.Module):
    """One layer of a source model with what it needs to run: ``(B, T, d) -> (B, T, d)``.

    Args:
        block: the layer module (a private copy: changing it never touches the source).
        config: the source model's config (attention implementation, sliding window, ...).
        rotary: the source model's rotary embedding module, or None (absolute positions).
        source: ``"model:layer"``, for messages and checkpoints.
        encoder: the block comes from an encoder (bidirectional) model.
    """

    def __init__(
        self, block: nn.Module, config, rotary: nn.Module | None, source: str, encoder: bool = False
    ) -> None:
        super().__init__()
        self.block = block
        self.rotary = rotary
        self.config = config
        self.source = source
        self.encoder = encoder
        self.hidden_dim = int(config.hidden_size)
        self.slot = 0
        # blocks whose rotary modules compute the same thing share one result per forward
        self._rope_signature = None
        if rotary is not None:
            scaling = float(getattr(rotary, "attention_scaling", 1.0))
            self._rope_signature = (type(rotary).__name__, scaling, *rotary.inv_freq.tolist())

    def set_cache_slot(self, slot: int) -> None:
        """Give the block's attention a unique cache index inside the fused model."""
        self.slot = slot
        for module in self.block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = slot

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values=None,
        use_cache: bool = False,
        shared: dict | None = None,
    ) -> torch.Tensor:
        """Run the layer on ``hidden (B, T, d)`` with a 2-D ``attention_mask (B, T_total)``.

        ``shared`` is a dict living for one forward pass of the fused model: blocks that need
        the same mask or rotary embeddings compute them once.
        """
        mask = self._shared(
            shared,
            (
                "mask",
                type(self.config).__name__,
                self.config._attn_implementation,
                getattr(self.config, "sliding_window", None),
                self.encoder,
                past_key_values.get_seq_length(self.slot) if past_key_values is not None else 0,
                hidden.shape[1],
                hidden.dtype,
            ),
            (attention_mask, position_ids),
            lambda: create_causal_mask(
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                position_ids=position_ids,
                layer_idx=self.slot,  # its own slot sizes the mask: not yet updated for these tokens
                allow_is_causal_skip=not self.encoder,  # an encoder is not causal by itself
            ),
        )
        if self.encoder:
            out = self.block(hidden, attention_mask=mask, past_key_values=past_key_values)
            return out[0] if isinstance(out, tuple) else out
        kwargs = {}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self._shared(
                shared,
                ("rope", self._rope_signature, hidden.dtype, hidden.device),
                (position_ids,),
                lambda: self.rotary(hidden, position_ids=position_ids),
            )
        out = self.block(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def _shared(shared: dict | None, key: tuple, inputs: tuple, compute):
        """``compute()``, or its earlier result in ``shared`` for the same key and inputs.

        Inputs are matched by identity and kept alive in ``shared`` (so an id is never reused
        while the dict lives).
        """
        if shared is None:
            return compute()
        full = (*key, *(id(x) for x in inputs))
        if full not in shared:
            shared[full] = (compute(), inputs)
        return shared[full][0]


class BlockExtractor:
    """Take layers out of a loaded model as :class:`ExpertBlock` objects.

    Raises:
        UnsupportedArchitectureError: the family is not supported (vision, encoder-decoder,
            others), or the layer index is out of range (naming the model's layer count).
    """

    def __init__(self, model: nn.Module, arch: ArchitectureInfo, name: str) -> None:
        self.check(arch, name)
        self.model, self.arch, self.name = model, arch, name
        self.layers = resolve_module(model, arch.layer_path)
        parent = resolve_module(model, arch.layer_path.rsplit(".", 1)[0])
        self.rotary = getattr(parent, "rotary_emb", None) if arch.rope is not None else None

    @staticmethod
    def check(arch: ArchitectureInfo, name: str) -> None:
        """Raise UnsupportedArchitectureError unless ``arch``'s blocks can be fused (config only)."""
        supported = DECODER_FAMILIES | ENCODER_FAMILIES
        if arch.architecture_type not in supported:
            raise UnsupportedArchitectureError(
                f"{name}: {arch.architecture_type} ({arch.architecture_family}) blocks cannot be "
                f"fused; supported families: {', '.join(sorted(supported))}"
            )

    def extract(self, layer_idx: int, materialise=None) -> ExpertBlock:
        """A private copy of layer ``layer_idx`` with its model's rotary module and config.

        ``materialise(module, prefix)``, when given, fills a meta-device copy from the
        checkpoint (lazy loading: the rest of the model is never read).
        """
        n = len(self.layers)
        if not 0 <= layer_idx < n:
            raise UnsupportedArchitectureError(
                f"{self.name} has {n} layers (0..{n - 1}); layer {layer_idx} does not exist"
            )
        block = copy.deepcopy(self.layers[layer_idx])
        rotary = copy.deepcopy(self.rotary) if self.rotary is not None else None
        if materialise is not None:
            materialise(block, f"{self.arch.layer_path}.{layer_idx}.")
            if rotary is not None:  # its buffers are computed from the config, not stored
                rotary = type(self.rotary)(config=self.model.config)
        encoder = self.arch.architecture_type in ENCODER_FAMILIES
        return ExpertBlock(block, self.model.config, rotary, f"{self.name}:{layer_idx}", encoder)

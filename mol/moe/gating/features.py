"""What the gating network reads: a base model's hidden states at one layer, mean-pooled.

Layer 0 is the token-embedding output (the seed's choice); layer ``L >= 1`` is the output of
block ``L`` (before any final norm). The same :class:`FeatureEncoder` computes the features
for training and, inside :class:`~mol.moe.gating.model.MoEModel`, for routing, so the two
cannot drift apart. Features of a training set are cached on disk under
``<cache_root>/features/`` keyed by the base model's content hash, the data hash and the
feature settings.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mol._errors import ConfigError
from mol._progress import progress
from mol.arch import detect_architecture, resolve_module

__all__ = [
    "FeatureEncoder",
    "build_feature_encoder",
    "encoder_config",
    "compute_features",
    "model_fingerprint",
    "cached_features",
]

logger = logging.getLogger("mol")

_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")


class FeatureEncoder(nn.Module):
    """Mean-pooled hidden states ``(B, D)`` of a (truncated) transformers backbone.

    Args:
        backbone: the base model's backbone (``model.base_model``) holding only the first
            ``layer`` blocks.
        layer: 0 for the token-embedding output, ``L`` for the output of block ``L``.
        layers_path: dotted path of the block list inside ``backbone`` (``"layers"``, ``"h"``).
        max_length: only the first ``max_length`` real (unmasked) tokens of each row are pooled,
            as in training where examples are truncated to ``max_length`` tokens.
    """

    def __init__(self, backbone: nn.Module, layer: int, layers_path: str, max_length: int) -> None:
        super().__init__()
        blocks = resolve_module(backbone, layers_path)
        if len(blocks) != layer:
            raise ConfigError(
                f"feature encoder for layer {layer} needs exactly {layer} blocks, got {len(blocks)}"
            )
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        self.backbone = backbone
        self.layer = layer
        self.layers_path = layers_path
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        """Feature width ``D``."""
        return self.backbone.get_input_embeddings().embedding_dim

    def forward(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled features ``(B, D)`` in float32 from ``input_ids`` ``(B, T)``.

        Rows with no real token get zeros.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.layer == 0:
            hidden = self.backbone.get_input_embeddings()(input_ids)
        else:
            hidden = self._block_output(input_ids, attention_mask)
        mask = attention_mask.to(torch.bool)
        mask = mask & (mask.long().cumsum(dim=1) <= self.max_length)
        weights = mask.to(torch.float32).unsqueeze(-1)
        summed = (hidden.to(torch.float32) * weights).sum(dim=1)
        return summed / weights.sum(dim=1).clamp(min=1.0)

    def _block_output(self, input_ids, attention_mask) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def grab(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        last = resolve_module(self.backbone, self.layers_path)[self.layer - 1]
        handle = last.register_forward_hook(grab)
        try:
            self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"block {self.layer} ran {len(captured)} times in one forward")
        return captured[0]


def _layers_path(model: nn.Module) -> str:
    """Path of the block list relative to ``model.base_model``."""
    info = detect_architecture(model.config)
    prefix = model.base_model_prefix
    path = info.layer_path
    if prefix and path.startswith(prefix + "."):
        return path[len(prefix) + 1 :]
    if model.base_model is model:
        return path
    raise ConfigError(
        f"cannot place block list {path!r} inside the backbone '{prefix}' of {type(model).__name__}"
    )


def encoder_config(config, layer: int):
    """A copy of a base model's config truncated to its first ``layer`` blocks."""
    num_layers = config.num_hidden_layers
    if not 0 <= layer <= num_layers:
        raise ConfigError(f"feature_layer must be in 0..{num_layers} for this model, got {layer}")
    truncated = copy.deepcopy(config)
    truncated.num_hidden_layers = layer
    if isinstance(getattr(truncated, "layer_types", None), list):
        truncated.layer_types = truncated.layer_types[:layer]
    return truncated


def build_feature_encoder(model: nn.Module, layer: int, max_length: int) -> FeatureEncoder:
    """A :class:`FeatureEncoder` over a loaded causal LM's backbone, keeping blocks ``< layer``.

    The model's backbone is reused (not copied) and its later blocks are dropped, so pass a
    model loaded for this purpose.
    """
    config = encoder_config(model.config, layer)
    layers_path = _layers_path(model)
    backbone = model.base_model
    blocks = resolve_module(backbone, layers_path)
    parent_path, _, name = layers_path.rpartition(".")
    parent = resolve_module(backbone, parent_path)
    setattr(parent, name, nn.ModuleList(list(blocks)[:layer]))
    backbone.config = config
    return FeatureEncoder(backbone, layer, layers_path, max_length).eval()


@torch.no_grad()
def compute_features(
    encoder: FeatureEncoder,
    tokenizer,
    texts: list[str] | tuple[str, ...],
    *,
    batch_size: int = 32,
    desc: str = "features",
) -> torch.Tensor:
    """Features ``(N, D)`` float32 of ``texts``, tokenised as prompts (truncated to
    ``encoder.max_length`` tokens), ``batch_size`` texts per forward pass."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(encoder.parameters()).device
    out = []
    for start in progress(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=encoder.max_length,
            return_tensors="pt",
        )
        out.append(encoder(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu())
    return torch.cat(out)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 of a model directory's weights, config and tokenizer files (names and bytes)."""
    model_dir = Path(model_dir)
    names = sorted(
        p.name for p in model_dir.iterdir() if p.suffix == ".safetensors" or p.name in _MODEL_FILES
    )
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
        with open(model_dir / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def cached_features(cache_dir: Path, key: dict, compute) -> tuple[torch.Tensor, bool]:
    """Load the features stored under ``key`` in ``cache_dir``, or ``compute()`` and store them.

    Args:
        cache_dir: directory of ``<sha256(key)>.safetensors`` files.
        key: JSON-able dict naming everything the features depend on.
        compute: zero-argument callable returning the ``(N, D)`` tensor.

    Returns:
        ``(features, hit)`` with ``hit`` True when they came from the cache.
    """
    import json

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"{digest}.safetensors"
    if path.is_file():
        logger.info("features from cache %s", path)
        return load_file(str(path))["features"], True
    features = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"features": features.contiguous()}, str(tmp), metadata={"key": json.dumps(key)})
    os.replace(tmp, path)
    return features, False

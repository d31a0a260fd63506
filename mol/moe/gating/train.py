"""Train the gating network: features once, stratified splits, class-weighted loss, best by val F1.

The test split is held out from training **and** from model selection: the best epoch is
chosen on the validation split only, and the test split is evaluated once, at the end, with
the best weights.

Outputs (in ``output_dir``): ``best_model.safetensors``, ``final_model.safetensors`` and
``training_info.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mol._errors import ConfigError, closest_match_hint
from mol._progress import progress
from mol.moe.gating.data import TextSource, data_fingerprint, load_source
from mol.moe.gating.features import (
    build_feature_encoder,
    cached_features,
    compute_features,
    model_fingerprint,
)
from mol.moe.gating.network import GatingNetwork, save_gating_network

__all__ = ["GateTrainConfig", "classification_metrics", "stratified_split", "train_gating_network"]

logger = logging.getLogger("mol")

BEST_MODEL = "best_model.safetensors"
FINAL_MODEL = "final_model.safetensors"
TRAINING_INFO = "training_info.json"


@dataclass
class GateTrainConfig:
    """Everything :func:`train_gating_network` needs; JSON configs use these field names.

    Args:
        base_model: model whose pooled hidden states are the features (path or hub id).
        data: one text source per expert, in expert order (see :mod:`mol.moe.gating.data`).
        hidden_dims: gating network hidden widths.
        dropout, learning_rate, batch_size, num_epochs, weight_decay: the usual (AdamW).
        train_split, val_split, test_split: fractions of each class; must sum to 1.
        seed: splits, initialisation and batch order.
        feature_layer: 0 = token embeddings (default), ``L`` = output of block ``L``.
        max_length: tokens per example fed to the base model (longer ones are truncated).
        example_chars: length of the examples cut from zoo documents.
        max_examples_per_source: cap on examples per source (None: all).
        zoo_size: whose corpus budget a zoo domain name reads.
        feature_batch_size: texts per forward pass of the base model.
        cache_features: reuse / store features under ``<cache_root>/features``.
    """

    base_model: str
    data: tuple[str, ...]
    hidden_dims: tuple[int, ...] = (512, 256)
    dropout: float = 0.1
    learning_rate: float = 1e-4
    batch_size: int = 32
    num_epochs: int = 10
    weight_decay: float = 0.01
    train_split: float = 0.7
    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 42
    feature_layer: int = 0
    max_length: int = 256
    example_chars: int = 512
    max_examples_per_source: int | None = None
    zoo_size: str = "demo"
    feature_batch_size: int = 32
    cache_features: bool = True

    def __post_init__(self) -> None:
        self.base_model = os.fspath(self.base_model)
        if isinstance(self.data, str):
            self.data = (self.data,)
        self.data = tuple(os.fspath(d) for d in self.data)
        if isinstance(self.hidden_dims, str):
            self.hidden_dims = parse_hidden_dims(self.hidden_dims)
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if len(self.data) < 2:
            raise ConfigError(f"data needs one source per expert (>= 2), got {len(self.data)}")
        for name in ("train_split", "val_split", "test_split"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")
        total = self.train_split + self.val_split + self.test_split
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"train_split + val_split + test_split must sum to 1, got "
                f"{self.train_split} + {self.val_split} + {self.test_split} = {total:g}"
            )
        for name in ("batch_size", "num_epochs", "max_length", "example_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.feature_batch_size < 1:
            raise ConfigError(f"feature_batch_size must be >= 1, got {self.feature_batch_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.feature_layer < 0:
            raise ConfigError(f"feature_layer must be >= 0, got {self.feature_layer}")
        if self.max_examples_per_source is not None and self.max_examples_per_source < 1:
            raise ConfigError(
                f"max_examples_per_source must be >= 1, got {self.max_examples_per_source}"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        """The valid keys of a JSON config."""
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GateTrainConfig:
        """Build from a dict; an unknown key raises ConfigError naming it and the closest key."""
        valid = cls.field_names()
        for key in values:
            if key not in valid:
                raise ConfigError(
                    f"unknown gate training config key {key!r}{closest_match_hint(key, valid)}; "
                    f"valid keys: {', '.join(valid)}"
                )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``config`` of ``training_info.json``)."""
        out = {name: getattr(self, name) for name in self.field_names()}
        out["data"] = list(self.data)
        out["hidden_dims"] = list(self.hidden_dims)
        return out


def parse_hidden_dims(text: str) -> tuple[int, ...]:
    """``"512,256"`` -> ``(512, 256)``; ``""`` -> ``()`` (a linear classifier)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"hidden_dims must be comma-separated integers like '512,256', got {text!r}"
        ) from None


def stratified_split(
    labels: torch.Tensor, fractions: tuple[float, float, float], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the train / val / test splits, drawn per class so each keeps its share.

    Raises:
        ConfigError: a split would hold no example of some class.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for cls in labels.unique(sorted=True).tolist():
        idx = (labels == cls).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = round(len(idx) * fractions[1])
        n_test = round(len(idx) * fractions[2])
        n_train = len(idx) - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise ConfigError(
                f"class {cls} has {len(idx)} examples: too few for splits {fractions} "
                f"(train {n_train}, val {n_val}, test {n_test}); add data or change the splits"
            )
        for part, chunk in zip(parts, idx.split([n_train, n_val, n_test]), strict=True):
            part.append(chunk)
    return tuple(torch.cat(p).sort().values for p in parts)


def classification_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, precision / recall / F1 and the confusion matrix of predictions.

    ``f1``, ``precision`` and ``recall`` are those of class 1 for two classes (binary), the
    unweighted mean over classes (macro) otherwise; ``macro_f1`` is always given. The
    confusion matrix has true classes as rows and predictions as columns.
    """
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    tp = confusion.diag().double()
    predicted = confusion.sum(dim=0).double()
    actual = confusion.sum(dim=1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(
        denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp)
    )
    total = int(confusion.sum())
    pick = (lambda t: float(t[1])) if num_classes == 2 else (lambda t: float(t.mean()))
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "f1": pick(f1),
        "precision": pick(precision),
        "recall": pick(recall),
        "macro_f1": float(f1.mean()),
        "per_class_f1": [float(v) for v in f1],
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def _evaluate(net: GatingNetwork, features, labels, weights, num_classes: int) -> dict:
    net.eval()
    logits = net(features)
    metrics = classification_metrics(logits.argmax(dim=-1), labels, num_classes)
    metrics["loss"] = float(F.cross_entropy(logits, labels, weight=weights))
    return metrics


def _load_data(config: GateTrainConfig) -> list[TextSource]:
    return [
        load_source(
            spec,
            zoo_size=config.zoo_size,
            example_chars=config.example_chars,
            max_examples=config.max_examples_per_source,
        )
        for spec in config.data
    ]


def _features(config: GateTrainConfig, sources: list[TextSource]) -> tuple[torch.Tensor, dict]:
    from mol.io import load_causal_lm, load_tokenizer, resolve_model_dir
    from mol.zoo import cache_root

    model_dir = resolve_model_dir(config.base_model)
    texts = [t for s in sources for t in s.examples]
    key = {
        "kind": "mol.moe.gating.features/1",
        "model": model_fingerprint(model_dir),
        "data": data_fingerprint(sources),
        "layer": config.feature_layer,
        "max_length": config.max_length,
    }

    def compute() -> torch.Tensor:
        model = load_causal_lm(model_dir, dtype=torch.float32)
        encoder = build_feature_encoder(model, config.feature_layer, config.max_length)
        tokenizer = load_tokenizer(model_dir)
        return compute_features(
            encoder, tokenizer, texts, batch_size=config.feature_batch_size, desc="gate features"
        )

    if config.cache_features:
        features, hit = cached_features(cache_root() / "features", key, compute)
    else:
        features, hit = compute(), False
    if features.shape[0] != len(texts):
        raise RuntimeError(f"{features.shape[0]} feature rows for {len(texts)} examples")
    return features, {**key, "base_model_dir": str(model_dir), "cache_hit": hit}


def _fit(net, optimizer, features, labels, splits, class_weights, config, generator):
    """The epoch loop; returns (per-epoch metrics, best epoch (1-based), best state dict)."""
    train_idx, val_idx = splits[0], splits[1]  # the test split stays out of training
    num_classes = net.num_experts
    epochs: list[dict] = []
    best_f1, best_epoch, best_state = -1.0, 0, None
    for epoch in progress(range(1, config.num_epochs + 1), desc="gate training", unit="epoch"):
        net.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        total_loss = 0.0
        for batch in order.split(config.batch_size):
            loss = F.cross_entropy(net(features[batch]), labels[batch], weight=class_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
        val = _evaluate(net, features[val_idx], labels[val_idx], class_weights, num_classes)
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": total_loss / len(train_idx),
                **{f"val_{k}": v for k, v in val.items()},
            }
        )
        if val["f1"] > best_f1:  # ties keep the earlier epoch
            best_f1, best_epoch, best_state = val["f1"], epoch, copy.deepcopy(net.state_dict())
        logger.debug("gate epoch %d: val f1 %.4f", epoch, val["f1"])
    return epochs, best_epoch, best_state


def train_gating_network(
    config: GateTrainConfig, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Any]:
    """Train a gating network and write it to ``output_dir`` (atomically).

    Returns:
        The ``training_info.json`` contents: ``config``, ``embedding_dim``, ``num_experts``,
        ``experts`` (source names), ``feature`` (layer, hashes, base model directory),
        ``split_sizes``, ``class_weights``, ``epochs`` (per epoch: ``train_loss`` and the
        validation ``val_*`` metrics), ``selection`` (``val_f1``), ``best_epoch`` (1-based),
        ``test`` (accuracy, f1, precision, recall, macro_f1, confusion_matrix, loss of the
        best model), ``seconds``.

    Raises:
        ConfigError: bad splits or data; FileExistsError: ``output_dir`` is not empty and
        ``overwrite`` is False.
    """
    from mol.io import atomic_output_dir

    started = time.perf_counter()
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output directory {output_dir} exists and is not empty (pass --overwrite)"
        )
    torch.manual_seed(config.seed)
    sources = _load_data(config)
    features, feature_info = _features(config, sources)
    labels = torch.cat(
        [torch.full((len(s.examples),), i, dtype=torch.long) for i, s in enumerate(sources)]
    )
    num_classes = len(sources)
    splits = stratified_split(
        labels, (config.train_split, config.val_split, config.test_split), config.seed
    )
    train_idx, val_idx, test_idx = splits
    counts = torch.bincount(labels[train_idx], minlength=num_classes).double()
    class_weights = (counts.sum() / (num_classes * counts)).float()

    net = GatingNetwork(features.shape[1], num_classes, config.hidden_dims, config.dropout)
    net.set_standardisation(features[train_idx])
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    # The network is tiny: on CPU, one thread beats several (which mostly wait on each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        epochs, best_epoch, best_state = _fit(
            net, optimizer, features, labels, splits, class_weights, config, generator
        )
    finally:
        torch.set_num_threads(threads)
    best_f1 = epochs[best_epoch - 1]["val_f1"]
    final = copy.deepcopy(net)
    net.load_state_dict(best_state)
    test = _evaluate(net, features[test_idx], labels[test_idx], class_weights, num_classes)
    info = {
        "config": config.to_dict(),
        "embedding_dim": int(features.shape[1]),
        "num_experts": num_classes,
        "experts": [s.name for s in sources],
        "examples_per_expert": [len(s.examples) for s in sources],
        "feature": feature_info,
        "split_sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        "class_weights": [float(w) for w in class_weights],
        "selection": "val_f1" if num_classes == 2 else "val_macro_f1 (reported as val_f1)",
        "best_epoch": best_epoch,
        "epochs": epochs,
        "test": test,
        "seconds": round(time.perf_counter() - started, 2),
    }
    meta = {
        "feature": {
            "layer": config.feature_layer,
            "max_length": config.max_length,
            "base_model": feature_info["base_model_dir"],
            "model_fingerprint": feature_info["model"],
        },
        "experts": info["experts"],
    }
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        save_gating_network(net, tmp / BEST_MODEL, {**meta, "epoch": best_epoch})
        save_gating_network(final, tmp / FINAL_MODEL, {**meta, "epoch": config.num_epochs})
        (tmp / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")
    logger.info(
        "gate: best epoch %d (val f1 %.4f); test accuracy %.4f, f1 %.4f -> %s",
        best_epoch,
        best_f1,
        test["accuracy"],
        test["f1"],
        output_dir,
    )
    return info

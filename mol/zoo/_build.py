"""Build the zoo (or reuse the cached build) and describe it through a manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from mol.eval.perplexity import perplexity
from mol.io import atomic_output_dir
from mol.training.data import pack_texts
from mol.zoo._corpus import DOMAINS, Corpus, load_corpus
from mol.zoo._specs import ZOO_VERSION, ZooSpec, get_spec
from mol.zoo._tokenizer import train_tokenizer
from mol.zoo._train import new_model, set_trainable, train_lm

__all__ = ["Zoo", "build_zoo", "cache_root", "zoo_dir", "load_zoo"]

logger = logging.getLogger("mol")
_MANIFEST = "manifest.json"


def cache_root() -> Path:
    """``$MOL_CACHE``, else ``$XDG_CACHE_HOME/mol``, else ``~/.cache/mol``."""
    if os.environ.get("MOL_CACHE"):
        return Path(os.environ["MOL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mol"


def zoo_dir(size: str = "demo") -> Path:
    """Where the zoo of ``size`` lives: ``<cache_root>/zoo/v<ZOO_VERSION>/<size>``."""
    get_spec(size)
    return cache_root() / "zoo" / f"v{ZOO_VERSION}" / size


@dataclass(frozen=True)
class Zoo:
    """A built zoo: one directory per model (HF format) and a manifest with held-out perplexities."""

    root: Path
    manifest: dict
    _held_out: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def spec(self) -> ZooSpec:
        """The size's spec."""
        return get_spec(self.manifest["size"])

    @property
    def model_names(self) -> list[str]:
        """Model names in build order (``base``, ``expert-code``, ``expert-prose``, ``gpt2-code``)."""
        return list(self.manifest["models"])

    def path(self, name: str) -> Path:
        """Directory of model ``name`` (loadable by ``AutoModelForCausalLM.from_pretrained``)."""
        if name not in self.manifest["models"]:
            raise KeyError(f"zoo has no model {name!r}; models: {', '.join(self.model_names)}")
        return self.root / name

    @property
    def tokenizer_path(self) -> Path:
        """Directory of the shared tokenizer."""
        return self.root / "tokenizer"

    def perplexity(self, name: str, domain: str) -> float:
        """Held-out perplexity of model ``name`` on ``domain`` measured at build time."""
        return self.manifest["perplexity"][name][domain]

    def corpus(self, domain: str) -> Corpus:
        """The domain's train / held-out texts, exactly as used for the build."""
        spec = self.spec
        return load_corpus(
            domain, max_train_chars=spec.max_train_chars, max_held_out_chars=spec.max_held_out_chars
        )

    def held_out_blocks(self, domain: str) -> torch.Tensor:
        """Held-out text of ``domain`` as ``(N, block_size)`` token blocks (computed once)."""
        if domain not in self._held_out:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(self.tokenizer_path)
            blocks = pack_texts(self.corpus(domain).held_out, tokenizer, self.spec.block_size)
            self._held_out[domain] = blocks
        return self._held_out[domain].clone()


def _fingerprint(spec: ZooSpec, corpora: dict[str, Corpus]) -> str:
    h = hashlib.sha256(ZOO_VERSION.encode())
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for domain in DOMAINS:
        h.update(corpora[domain].fingerprint().encode())
    return h.hexdigest()


def load_zoo(size: str = "demo") -> Zoo | None:
    """The cached zoo of ``size`` if it exists and matches this Python's text; else None."""
    spec = get_spec(size)
    root = zoo_dir(size)
    manifest_path = root / _MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    corpora = {
        d: load_corpus(
            d, max_train_chars=spec.max_train_chars, max_held_out_chars=spec.max_held_out_chars
        )
        for d in DOMAINS
    }
    if manifest.get("fingerprint") != _fingerprint(spec, corpora):
        logger.info("zoo cache at %s was built from other text or settings; rebuilding", root)
        return None
    return Zoo(root, manifest)


def build_zoo(size: str = "demo", *, force: bool = False) -> Zoo:
    """Build the zoo of ``size`` into the cache, or return the cached one.

    Deterministic for a given Python installation (seeded initialisation and batches). The
    build happens in a temporary directory renamed into place at the end, so an interrupted
    build leaves no partial zoo behind.
    """
    if not force and (zoo := load_zoo(size)) is not None:
        return zoo
    spec = get_spec(size)
    started = time.perf_counter()
    corpora = {
        d: load_corpus(
            d, max_train_chars=spec.max_train_chars, max_held_out_chars=spec.max_held_out_chars
        )
        for d in DOMAINS
    }
    root = zoo_dir(size)
    with atomic_output_dir(root, overwrite=True) as tmp:
        logger.info("building the %s zoo in %s", size, root)
        tokenizer = train_tokenizer(
            [t for d in DOMAINS for t in corpora[d].train], spec.vocab_size, tmp / "tokenizer"
        )
        train_blocks = {
            d: pack_texts(corpora[d].train, tokenizer, spec.block_size) for d in DOMAINS
        }
        held_blocks = {
            d: pack_texts(corpora[d].held_out, tokenizer, spec.block_size) for d in DOMAINS
        }
        models: dict[str, dict] = {}
        ppl: dict[str, dict[str, float]] = {}
        for mspec in spec.models:
            model = _build_model(mspec, spec, tokenizer, tmp)
            params = set_trainable(model, mspec.trainable)
            blocks = torch.cat([train_blocks[d] for d in mspec.domains])
            loss = train_lm(
                model,
                blocks,
                params,
                steps=mspec.steps,
                learning_rate=mspec.learning_rate,
                batch_size=spec.batch_size,
                seed=mspec.seed,
                desc=f"zoo {size}: {mspec.name}",
            )
            for param in model.parameters():
                param.requires_grad_(True)
            model.save_pretrained(tmp / mspec.name)
            tokenizer.save_pretrained(tmp / mspec.name)
            ppl[mspec.name] = {
                d: perplexity(model, held_blocks[d], desc=f"{mspec.name} on {d}") for d in DOMAINS
            }
            models[mspec.name] = {
                "arch": mspec.arch,
                "domains": list(mspec.domains),
                "init_from": mspec.init_from,
                "trainable": mspec.trainable,
                "parameters": sum(p.numel() for p in model.parameters()),
                "final_train_loss": round(loss, 4),
            }
            logger.info(
                "%s: held-out perplexity %s",
                mspec.name,
                ", ".join(f"{d} {v:.2f}" for d, v in ppl[mspec.name].items()),
            )
        manifest = {
            "version": ZOO_VERSION,
            "size": size,
            "fingerprint": _fingerprint(spec, corpora),
            "spec": spec.to_dict(),
            "models": models,
            "perplexity": ppl,
            "held_out_tokens": {d: int(held_blocks[d].numel()) for d in DOMAINS},
            "build_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Zoo(root, json.loads((root / _MANIFEST).read_text()))


def _build_model(mspec, spec: ZooSpec, tokenizer, tmp: Path) -> PreTrainedModel:
    if mspec.init_from is not None:
        return AutoModelForCausalLM.from_pretrained(tmp / mspec.init_from)
    return new_model(
        mspec,
        vocab_size=len(tokenizer),
        max_positions=2 * spec.block_size,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )

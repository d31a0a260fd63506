"""Load transformers models and tokenizers: safetensors only and no remote code unless asked."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from mol._errors import ModelNotFoundError
from mol._progress import is_quiet
from mol.io._layout import find_checkpoint, pickle_refused
from mol.io._resolve import default_allow_patterns, resolve_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["load_causal_lm", "load_tokenizer"]

logger = logging.getLogger("mol")

# Any one of these makes a directory worth handing to AutoTokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)


def load_causal_lm(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> PreTrainedModel:
    """Load a causal LM with ``AutoModelForCausalLM``, in eval mode. Returns only the model.

    The tokenizer is separate (:func:`load_tokenizer`), since merged and test models often
    have none. Weights must be safetensors unless ``allow_pickle=True``; this is checked on
    the resolved directory before transformers is called.

    Args:
        name_or_path: local model directory or hub repo id (see :func:`resolve_model_dir`).
        revision: hub branch, tag or commit.
        dtype: e.g. ``torch.bfloat16`` or ``"auto"``; None keeps transformers' default.
        device: where to move the model after loading; None leaves it on the CPU.
        trust_remote_code: run the repo's own modelling code (logs a warning).
        allow_pickle: accept ``pytorch_model.bin`` weights (read with ``weights_only=True``).

    Raises:
        ModelNotFoundError: no such directory or repo, or it holds no weights.
        UnsafeCheckpointError: only pickle weights and ``allow_pickle`` is False.
    """
    if trust_remote_code:
        logger.warning(
            "trust_remote_code=True: loading %s will run Python code from the model repository",
            name_or_path,
        )
    model_dir = resolve_model_dir(
        name_or_path,
        revision=revision,
        allow_patterns=default_allow_patterns(
            allow_pickle=allow_pickle, remote_code=trust_remote_code
        ),
    )
    layout = find_checkpoint(model_dir)
    if layout.kind == "pickle" and not allow_pickle:
        raise pickle_refused(layout)

    kwargs: dict = {
        "trust_remote_code": trust_remote_code,
        "use_safetensors": layout.kind == "safetensors",
    }
    if dtype is not None:
        kwargs["dtype"] = dtype
    # Imported here: transformers takes seconds to import, and the rest of mol.io needs none of it.
    import transformers
    from transformers import AutoModelForCausalLM

    if is_quiet():  # --quiet / MOL_QUIET silence transformers' loading bars too
        transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``AutoTokenizer`` from a local directory or hub repo id.

    Raises:
        ModelNotFoundError: no such directory or repo, or it holds no tokenizer files.
    """
    if trust_remote_code:
        logger.warning(
            "trust_remote_code=True: loading the tokenizer of %s will run Python code from the "
            "model repository",
            name_or_path,
        )
    model_dir = resolve_model_dir(
        name_or_path,
        revision=revision,
        allow_patterns=[
            p for p in default_allow_patterns(remote_code=trust_remote_code) if p != "*.safetensors"
        ],
    )
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        present = sorted(p.name for p in model_dir.iterdir())
        raise ModelNotFoundError(
            f"no tokenizer in {model_dir}: looked for {', '.join(_TOKENIZER_FILES)}; the "
            f"directory holds {', '.join(present) if present else 'nothing'}"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)

"""Turn a hub repo id or a local path into a local model directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from mol._errors import ModelNotFoundError

__all__ = ["DEFAULT_ALLOW_PATTERNS", "default_allow_patterns", "hub_offline", "resolve_model_dir"]

DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "tokenizer*",
)
"""Files fetched from the hub by default: configs, safetensors weights, tokenizer files."""


def default_allow_patterns(*, allow_pickle: bool = False, remote_code: bool = False) -> list[str]:
    """The hub download patterns: the defaults, plus ``*.bin`` / ``*.py`` only when asked."""
    patterns = list(DEFAULT_ALLOW_PATTERNS)
    if allow_pickle:
        patterns.append("*.bin")
    if remote_code:
        patterns.append("*.py")
    return patterns


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, read now (env or ``huggingface_hub.constants``)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def resolve_model_dir(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Return the local directory of a model given as a local path or a hub repo id.

    An existing directory is returned as is (absolute; ``revision`` is ignored). Otherwise a
    string that is a valid repo id is fetched with ``huggingface_hub.snapshot_download``
    (only from the local cache when ``HF_HUB_OFFLINE`` is set).

    Args:
        name_or_path: a local directory, or a hub repo id such as ``"org/model"``.
        revision: hub branch, tag or commit.
        allow_patterns: files to fetch; default :func:`default_allow_patterns`.
        allow_pickle: with the default patterns, also fetch ``*.bin`` pickle weights.

    Raises:
        ModelNotFoundError: found neither locally nor on the hub (or in its cache when
            offline); the message gives the absolute local path looked at and the hub's error.
    """
    local = Path(name_or_path).expanduser().absolute()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise ModelNotFoundError(f"{local} exists but is not a model directory")
    if not (isinstance(name_or_path, str) and _is_repo_id(name_or_path)):
        raise ModelNotFoundError(f"model directory {local} does not exist")

    offline = hub_offline()
    if allow_patterns is None:
        allow_patterns = default_allow_patterns(allow_pickle=allow_pickle)
    try:
        snapshot = snapshot_download(
            name_or_path,
            revision=revision,
            allow_patterns=list(allow_patterns),
            local_files_only=offline,
        )
    except (OSError, HFValidationError, EntryNotFoundError) as err:
        hub = (
            "in the local hub cache (HF_HUB_OFFLINE is set, so the hub is offline and was not "
            "contacted)"
            if offline
            else "on the Hugging Face Hub"
        )
        raise ModelNotFoundError(
            f"model '{name_or_path}' not found: no local directory {local}, and not found as "
            f"repo '{name_or_path}' {hub}: {type(err).__name__}: {err}"
        ) from err
    return Path(snapshot).resolve()


def _is_repo_id(name: str) -> bool:
    if os.path.isabs(name) or name.startswith(("./", "../", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True

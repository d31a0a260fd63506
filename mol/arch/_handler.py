"""Load a config (local directory or hub id), detect its architecture, and cache the result."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from transformers import AutoConfig, PretrainedConfig

from mol._errors import ConfigError, ModelNotFoundError, UnsupportedArchitectureError
from mol.arch._discover import discover_architecture
from mol.arch._families import family_spec
from mol.arch._info import ArchitectureInfo
from mol.arch._known import info_from_family

__all__ = ["UniversalArchitectureHandler", "detect_architecture", "clear_cache", "hub_offline"]

logger = logging.getLogger("mol")

_CONFIG_NAME = "config.json"
_TRUTHY = {"1", "on", "yes", "true"}

# (kind, key, revision, trust_remote_code, config.json mtime_ns) -> ArchitectureInfo
_CACHE: dict[tuple[object, ...], ArchitectureInfo] = {}


def clear_cache() -> None:
    """Forget every cached detection result (the next ``detect_architecture`` re-reads config.json)."""
    _CACHE.clear()


def hub_offline() -> bool:
    """True when the hub must not be contacted.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import; the variable is read again here so that
    setting it later (a test's ``monkeypatch.setenv``, a notebook cell) is honoured too. When either says
    offline, configs are loaded with ``local_files_only=True`` so no request is made.
    """
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY
    return env or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _config_is_local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.is_dir() else None


class UniversalArchitectureHandler:
    """Detect where any transformers model keeps its layers, embeddings, norm and head.

    Only ``config.json`` is read: known families come from a table, other model types are built on the
    meta device and searched (:func:`mol.arch.discover_architecture`). No weights are loaded.

    Args:
        trust_remote_code: allow configs/models with custom code from the hub (off by default; turning
            it on logs a warning on the ``"mol"`` logger because it runs code from the repository).
        revision: default hub revision (branch, tag or commit) for :meth:`detect_architecture`.
    """

    def __init__(self, trust_remote_code: bool = False, revision: str | None = None) -> None:
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        if trust_remote_code:
            logger.warning(
                "trust_remote_code=True: configs and model classes from the hub may run arbitrary code; "
                "use it only for repositories you trust"
            )

    def load_config(
        self, name_or_path: str | os.PathLike[str] | PretrainedConfig, revision: str | None = None
    ) -> PretrainedConfig:
        """Load ``config.json`` from a local directory or a hub id (a config object is returned as is).

        Args:
            name_or_path: local directory, hub id (``"org/name"``) or a ``PretrainedConfig``.
            revision: hub revision; defaults to the handler's.

        Returns:
            The ``PretrainedConfig``.

        Raises:
            ModelNotFoundError: neither a local directory nor a hub repository (or cache entry, when
                offline) has the config; the message gives the absolute path checked and the hub state.
            ConfigError: the local directory's config.json cannot be read (e.g. invalid JSON).
            UnsupportedArchitectureError: the config's ``model_type`` is unknown to transformers.
        """
        if isinstance(name_or_path, PretrainedConfig):
            return name_or_path
        name = os.fspath(name_or_path)
        revision = revision if revision is not None else self.revision
        local = _config_is_local(name)
        if local is not None and not (local / _CONFIG_NAME).is_file():
            raise ModelNotFoundError(
                f"model '{name}': local directory {local.resolve()} exists but has no {_CONFIG_NAME}"
            )
        offline = hub_offline()
        try:
            return AutoConfig.from_pretrained(
                name,
                revision=revision,
                trust_remote_code=self.trust_remote_code,
                local_files_only=offline,
            )
        except (OSError, EntryNotFoundError, HFValidationError) as err:
            if local is not None:  # the directory is there: its config.json is unreadable
                raise ConfigError(
                    f"model '{name}': cannot read {local.resolve() / _CONFIG_NAME}: {err}"
                ) from err
            raise ModelNotFoundError(_not_found_message(name, revision, offline, err)) from err
        except ValueError as err:  # transformers: unknown or missing model_type in config.json
            raise UnsupportedArchitectureError(f"model '{name}': {err}") from err

    def detect_architecture(
        self, name_or_path: str | os.PathLike[str] | PretrainedConfig, revision: str | None = None
    ) -> ArchitectureInfo:
        """Describe the model at ``name_or_path`` from its config alone (cached).

        Results are cached per (name_or_path, revision, trust_remote_code); for a local directory the
        key also holds ``config.json``'s ``mtime_ns``, so editing the file gives a fresh result. A
        ``PretrainedConfig`` is keyed by its JSON serialisation.

        Args:
            name_or_path: local directory, hub id or ``PretrainedConfig``.
            revision: hub revision; defaults to the handler's.

        Returns:
            An :class:`ArchitectureInfo` (the same object for repeated calls with the same key).

        Raises:
            ModelNotFoundError: see :meth:`load_config`.
            UnsupportedArchitectureError: no table entry and discovery found no layers/embedding.
            ConfigError: a size is missing from the config.
        """
        revision = revision if revision is not None else self.revision
        key = self._cache_key(name_or_path, revision)
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        config = self.load_config(name_or_path, revision)
        label = _label(name_or_path)
        spec = family_spec(config.model_type)
        if spec is not None:
            info = info_from_family(config, spec, label, trust_remote_code=self.trust_remote_code)
        else:
            info = discover_architecture(
                config, trust_remote_code=self.trust_remote_code, name_or_path=label
            )
        _CACHE[key] = info
        return info

    def _cache_key(
        self, name_or_path: str | os.PathLike[str] | PretrainedConfig, revision: str | None
    ) -> tuple[object, ...]:
        if isinstance(name_or_path, PretrainedConfig):
            # Configs are mutable, so the key is their content rather than their identity.
            content = name_or_path.to_json_string(use_diff=False)
            return ("config", content, revision, self.trust_remote_code, None)
        name = os.fspath(name_or_path)
        local = _config_is_local(name)
        if local is None:
            return ("hub", name, revision, self.trust_remote_code, None)
        config_file = local / _CONFIG_NAME
        mtime = config_file.stat().st_mtime_ns if config_file.is_file() else None
        return ("local", str(local.resolve()), revision, self.trust_remote_code, mtime)


def _label(name_or_path: str | os.PathLike[str] | PretrainedConfig) -> str:
    if isinstance(name_or_path, PretrainedConfig):
        return os.fspath(name_or_path.name_or_path or "")
    return os.fspath(name_or_path)


def _not_found_message(name: str, revision: str | None, offline: bool, err: BaseException) -> str:
    local = Path(name).expanduser().resolve()
    state = "is a file, not a directory" if local.exists() else "does not exist"
    at = f" at revision '{revision}'" if revision else ""
    hub = (
        "the Hugging Face Hub was not queried because HF_HUB_OFFLINE is set (only the local cache was "
        "checked)"
        if offline
        else f"the Hugging Face Hub has no repository '{name}'{at} (or it could not be reached)"
    )
    return (
        f"model '{name}' not found: looked for a local directory at {local} ({state}) and on "
        f"the hub: {hub}. Cause: {type(err).__name__}: {err}"
    )


def detect_architecture(
    name_or_path: str | os.PathLike[str] | PretrainedConfig,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ArchitectureInfo:
    """Module-level shortcut for ``UniversalArchitectureHandler(trust_remote_code).detect_architecture``.

    Args:
        name_or_path: local directory with a ``config.json``, hub id, or ``PretrainedConfig``.
        revision: hub revision (branch, tag or commit).
        trust_remote_code: allow custom code from the hub.

    Returns:
        The cached or freshly built :class:`ArchitectureInfo`.
    """
    handler = UniversalArchitectureHandler(trust_remote_code=trust_remote_code, revision=revision)
    return handler.detect_architecture(name_or_path)

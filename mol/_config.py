"""What every typed configuration shares: strict keys, field paths in messages, strict YAML.

Configurations are typed dataclasses; these helpers turn a parsed mapping into one, rejecting
unknown keys (naming the key and the closest valid spelling) and repeated YAML keys, and
prefixing every message with the path of the field it is about (``experts[1].source_model``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mol._errors import ConfigError, closest_match_hint

__all__ = ["check_keys", "read_yaml", "within"]

_T = TypeVar("_T")


def check_keys(raw: Any, valid: Sequence[str], path: str) -> Mapping[str, Any]:
    """``raw`` if it is a mapping whose keys are all in ``valid``; else ConfigError naming it."""
    what = path or "the configuration"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what}: expected a mapping with keys {', '.join(valid)}, got {raw!r}")
    for key in raw:
        if key not in valid:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                f"{where}: unknown key{closest_match_hint(str(key), valid)}; "
                f"valid keys: {', '.join(valid)}"
            )
    return raw


def within(path: str, build: Callable[[], _T]) -> _T:
    """Run ``build`` and prefix the path of whatever it rejects (messages read ``field: why``)."""
    try:
        return build()
    except ConfigError as exc:
        raise ConfigError(f"{path}.{exc}" if path else str(exc)) from None


class _Loader(yaml.SafeLoader):
    """safe_load that rejects a key repeated in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                mark = key_node.start_mark
                raise ConfigError(
                    f"{key}: key repeated in the same mapping (line {mark.line + 1}); "
                    "YAML would silently keep only the last one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(source: str | os.PathLike | Mapping[str, Any], what: str = "") -> Mapping[str, Any]:
    """A parsed mapping from a mapping, a YAML file path or YAML text.

    ``what`` describes the expected content for the error when the YAML is not a mapping
    (e.g. ``"merge_method: ..., models: ..."``).
    """
    if isinstance(source, Mapping):
        return source
    text = os.fspath(source)
    looks_like_path = (
        "\n" not in text and ":" not in text and text.strip().endswith((".yml", ".yaml"))
    )
    if isinstance(source, Path) or looks_like_path:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        text = path.read_text(encoding="utf-8")
    elif "\n" not in text and os.path.isfile(text):
        text = Path(text).read_text(encoding="utf-8")
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        expected = f" ({what})" if what else ""
        raise ConfigError(
            f"the configuration: expected a YAML mapping{expected}, got {raw!r}; "
            "a file path must name an existing file"
        )
    return raw

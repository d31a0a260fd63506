"""The zoo's two text domains, taken from files every Python installation ships.

* ``code``: the standard library's ``.py`` sources (tests, encodings tables, ``pydoc_data``
  and third-party ``site-packages`` excluded).
* ``prose``: the English documentation topics in ``pydoc_data.topics``.

Documents are assigned to the held-out split by a hash of their name, so the split is fixed
for a given Python installation and the held-out part is never trained on.
"""

from __future__ import annotations

import hashlib
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DOMAINS", "Domain", "Corpus", "load_corpus"]

Domain = Literal["code", "prose"]
DOMAINS: tuple[Domain, ...] = ("code", "prose")

_HELD_OUT_EVERY = 8  # one document in eight (by name hash) is held out
_PROSE_SECTION_CHARS = 2000
_SKIP_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "encodings",
    "pydoc_data",
    "__pycache__",
    "lib2to3",
    "turtledemo",
    "ensurepip",
}


@dataclass(frozen=True)
class Corpus:
    """Documents of one domain, split into train and held-out parts (lists of strings)."""

    domain: Domain
    train: tuple[str, ...]
    held_out: tuple[str, ...]

    def fingerprint(self) -> str:
        """sha256 of the split texts: changes whenever the source text changes."""
        h = hashlib.sha256(self.domain.encode())
        for part in (self.train, self.held_out):
            for doc in part:
                h.update(b"\0" + doc.encode("utf-8", "surrogatepass"))
            h.update(b"\1")
        return h.hexdigest()


def _is_held_out(name: str) -> bool:
    return zlib.crc32(name.encode()) % _HELD_OUT_EVERY == 0


def _take(docs: list[tuple[str, str]], max_chars: int) -> tuple[str, ...]:
    """Documents in a fixed pseudo-random order (by name hash) until ``max_chars`` is reached."""
    docs = sorted(docs, key=lambda d: hashlib.sha1(d[0].encode()).hexdigest())
    taken, total = [], 0
    for _, text in docs:
        if total >= max_chars:
            break
        text = text[: max_chars - total]
        taken.append(text)
        total += len(text)
    return tuple(taken)


def _code_documents() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > 200:
            docs.append((rel.as_posix(), text))
    if not docs:
        raise RuntimeError(f"no standard-library sources found under {root}")
    return docs


def _prose_documents() -> list[tuple[str, str]]:
    # Topics vary from 200 to 40,000 characters; sections of about 2,000 characters keep the
    # held-out share near one in eight whichever topics the hash picks.
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        section, index = "", 0
        for paragraph in topics[name].split("\n\n"):
            section = f"{section}\n\n{paragraph}" if section else paragraph
            if len(section) >= _PROSE_SECTION_CHARS:
                docs.append((f"{name}#{index}", section))
                section, index = "", index + 1
        if len(section) > 200:
            docs.append((f"{name}#{index}", section))
    return docs


def load_corpus(domain: Domain, *, max_train_chars: int, max_held_out_chars: int) -> Corpus:
    """Load one domain's documents, split by name hash, each part capped in characters.

    Raises:
        ValueError: ``domain`` is not one of :data:`DOMAINS`.
    """
    if domain == "code":
        docs = _code_documents()
    elif domain == "prose":
        docs = _prose_documents()
    else:
        raise ValueError(f"unknown zoo domain {domain!r}; valid: {', '.join(DOMAINS)}")
    train = [d for d in docs if not _is_held_out(d[0])]
    held = [d for d in docs if _is_held_out(d[0])]
    return Corpus(domain, _take(train, max_train_chars), _take(held, max_held_out_chars))

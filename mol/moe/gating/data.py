"""Text sources for the gating network: one source per expert, cut into prompt-sized examples.

A source is one of

* a text file with one example per line (blank lines skipped),
* a ``.jsonl`` file whose records each have a ``text`` field,
* a zoo domain name (``code`` or ``prose``): the **training** part of that domain's corpus
  (:func:`mol.zoo.load_corpus` with the zoo size's budget), documents cut into examples of
  about ``example_chars`` characters. The held-out part, on which the zoo's perplexities are
  measured, is never read.

An existing file always wins over a domain name of the same spelling.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mol._errors import ConfigError, closest_match_hint
from mol.training.data import read_jsonl

__all__ = ["TextSource", "load_source", "split_document", "data_fingerprint"]

# Zoo fragments shorter than this (a closing brace, a lone heading) say little about the domain.
_MIN_ZOO_EXAMPLE_CHARS = 64


@dataclass(frozen=True)
class TextSource:
    """The examples of one expert's source, in file or corpus order."""

    name: str
    examples: tuple[str, ...]


def split_document(text: str, example_chars: int) -> list[str]:
    """Cut a document into examples of at most ``example_chars`` characters.

    Paragraphs (blank-line separated) are joined while they fit; a paragraph longer than
    ``example_chars`` is cut into ``example_chars`` pieces. Pieces shorter than 64 characters
    (after stripping) are dropped.
    """
    if example_chars < 1:
        raise ConfigError(f"example_chars must be >= 1, got {example_chars}")
    pieces: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        candidate = f"{current}\n\n{paragraph}" if current else paragraph
        if len(candidate) <= example_chars:
            current = candidate
            continue
        if current:
            pieces.append(current)
        while len(paragraph) > example_chars:
            pieces.append(paragraph[:example_chars])
            paragraph = paragraph[example_chars:]
        current = paragraph
    if current:
        pieces.append(current)
    return [p for p in pieces if len(p.strip()) >= _MIN_ZOO_EXAMPLE_CHARS]


def load_source(
    spec: str,
    *,
    zoo_size: str = "demo",
    example_chars: int = 512,
    max_examples: int | None = None,
) -> TextSource:
    """Read one source's examples.

    Args:
        spec: a file path (``.jsonl`` -> ``text`` field per record; anything else -> one
            example per line) or a zoo domain name.
        zoo_size: which zoo size's corpus budget a domain name reads.
        example_chars: example length for zoo documents (files are taken as they are).
        max_examples: keep only the first this many examples (None: all).

    Raises:
        ConfigError: no such file or domain, a JSONL record without a string ``text``, or the
            source yields no example.
    """
    from mol.zoo import DOMAINS

    path = Path(spec).expanduser()
    if path.is_file():
        examples = _read_jsonl(path) if path.suffix == ".jsonl" else _read_lines(path)
    elif spec in DOMAINS:
        examples = list(_zoo_examples(spec, zoo_size, example_chars))
    else:
        raise ConfigError(
            f"data source {spec!r} is neither a file nor a zoo domain"
            f"{closest_match_hint(spec, DOMAINS)}; domains: {', '.join(DOMAINS)}"
        )
    if max_examples is not None:
        examples = examples[:max_examples]
    if not examples:
        raise ConfigError(f"data source {spec!r} holds no examples")
    return TextSource(spec, tuple(examples))


def data_fingerprint(sources: list[TextSource]) -> str:
    """sha256 over every example of every source, in order (source boundaries included)."""
    h = hashlib.sha256()
    for source in sources:
        h.update(b"\2")
        for text in source.examples:
            h.update(b"\0" + text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _zoo_examples(domain: str, zoo_size: str, example_chars: int) -> tuple[str, ...]:
    # Reading the standard library takes seconds; a process (the demo, a test session) often
    # asks for the same domain more than once.
    from mol.zoo import get_spec, load_corpus

    zspec = get_spec(zoo_size)
    corpus = load_corpus(
        domain, max_train_chars=zspec.max_train_chars, max_held_out_chars=zspec.max_held_out_chars
    )
    return tuple(piece for doc in corpus.train for piece in split_document(doc, example_chars))


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _read_jsonl(path: Path) -> list[str]:
    return [text for text in read_jsonl(path) if text.strip()]

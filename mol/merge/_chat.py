"""The ``chat_template`` setting: a built-in name, ``auto``, or a Jinja template of one's own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mol._errors import ConfigError, closest_match_hint

__all__ = ["BUILTIN_TEMPLATES", "check_chat_template", "resolve_chat_template"]

BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
}


def _is_jinja(text: str) -> bool:
    return "{{" in text or "{%" in text


def check_chat_template(value: str | None) -> None:
    """Raise ConfigError for a name that is neither built in, ``auto``, nor a Jinja template."""
    if value is None or value == "auto" or value in BUILTIN_TEMPLATES or _is_jinja(value):
        return
    valid = [*BUILTIN_TEMPLATES, "auto"]
    raise ConfigError(
        f"chat_template: unknown template {value!r}{closest_match_hint(value, valid)};"
        f" give one of {', '.join(valid)} or a Jinja template"
    )


def resolve_chat_template(value: str | None, model_dirs: list[Path]) -> str | None:
    """The template text to save, or None to keep whatever the tokenizer files carry.

    ``auto`` takes the template most of the models carry (``chat_template.jinja``), and keeps
    the tokenizer's own when none does.
    """
    check_chat_template(value)
    if value is None:
        return None
    if value == "auto":
        found = [
            p.joinpath("chat_template.jinja").read_text()
            for p in model_dirs
            if p.joinpath("chat_template.jinja").is_file()
        ]
        return Counter(found).most_common(1)[0][0] if found else None
    return BUILTIN_TEMPLATES.get(value, value)

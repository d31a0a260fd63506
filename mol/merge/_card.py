"""The model card (README.md) written next to every merge."""

from __future__ import annotations

import yaml

__all__ = ["model_card"]

_TEMPLATE = """---
{front_matter}---
# {name}

A merge of pre-trained language models made with Mango (`mol-merge`), whose configuration
format is mergekit's.

## Merge method

**{method}**{reference}{base_text}.

## Models merged

{model_list}

## Parameters

{parameters}

## Configuration

The following YAML configuration produced this model (`mol-merge CONFIG OUT` or
`mergekit-yaml CONFIG OUT`):

```yaml
{config_yaml}```
"""


def model_card(
    *,
    name: str,
    method: str,
    reference: str,
    base_model: str | None,
    models: list[str],
    parameters: dict[str, object],
    config_yaml: str,
) -> str:
    """Markdown with YAML front matter (``base_model``, ``tags``, ``library_name``).

    Args:
        name: the output directory's name (card title).
        method: merge method name; ``reference``: its paper URL (may be empty).
        base_model: the base model reference, if any.
        models: every input model reference, in input order.
        parameters: the method's effective global parameters (defaults applied).
        config_yaml: the configuration as YAML (the exact text that reproduces the merge).
    """
    front = {
        "base_model": sorted(set(models) | ({base_model} if base_model else set())),
        "library_name": "transformers",
        "tags": ["mergekit", "merge", "mol"],
    }
    model_list = "\n".join(f"- `{m}`" + (" (base)" if m == base_model else "") for m in models)
    params = "\n".join(f"- `{k}`: {v}" for k, v in parameters.items()) or "- (none)"
    return _TEMPLATE.format(
        front_matter=yaml.safe_dump(front, sort_keys=False),
        name=name,
        method=method,
        reference=f" ([reference]({reference}))" if reference else "",
        base_text=f", with `{base_model}` as the base" if base_model else "",
        model_list=model_list,
        parameters=params,
        config_yaml=config_yaml if config_yaml.endswith("\n") else config_yaml + "\n",
    )

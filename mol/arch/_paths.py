"""Turn the dotted paths in ``ArchitectureInfo`` into modules of an instantiated model."""

from __future__ import annotations

from torch import nn

from mol._errors import UnsupportedArchitectureError, closest_match_hint

__all__ = ["resolve_module"]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule of ``model`` at dotted ``path`` (``"model.layers"``, ``"transformer.h.0"``).

    Args:
        model: an instance of the ``architecture_class`` the path was detected for.
        path: dotted attribute path; numeric parts index into ``nn.ModuleList``/``nn.Sequential``.
            ``""`` returns ``model`` itself.

    Returns:
        The ``nn.Module`` at ``path``.

    Raises:
        UnsupportedArchitectureError: a part of the path does not exist (the message names the missing
            part, where it was looked for, the children that do exist and the closest spelling), or the
            path names a parameter/tensor rather than a module (use ``model.get_parameter(path)``).
    """
    module = model
    walked: list[str] = []
    for part in path.split(".") if path else []:
        child = module._modules.get(part)
        if child is None:
            where = ".".join(walked) or "<root>"
            if part in module._parameters or part in module._buffers:
                raise UnsupportedArchitectureError(
                    f"'{path}' in {type(model).__name__} is a parameter/buffer, not a module "
                    f"(read it with model.get_parameter({path!r}))"
                )
            children = list(module._modules)
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has no submodule '{path}': '{where}' "
                f"({type(module).__name__}) has no child '{part}'; its children are {children}"
                f"{closest_match_hint(part, children)}"
            )
        module = child
        walked.append(part)
    return module

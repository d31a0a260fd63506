"""Merge methods: pure tensor math, one method per module, registered on import.

Each module registers a :class:`MethodSpec` (name, function, typed parameters, input
contract); see ``_registry`` for the call convention. Semantics follow mergekit 0.1.5.
"""

from mol.merge.methods import (  # noqa: F401  (imported to register the methods)
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    linear,
    model_stock,
    multislerp,
    nuslerp,
    passthrough,
    slerp,
    task_arithmetic,
    ties,
)
from mol.merge.methods._registry import (
    REQUIRED,
    MethodSpec,
    ParamSpec,
    get_method,
    list_methods,
)

__all__ = ["REQUIRED", "ParamSpec", "MethodSpec", "get_method", "list_methods"]

"""Static merging, mergekit-compatible: YAML or Python in, one ordinary model out.

- :func:`load_merge_config` reads mergekit YAML (typos are errors naming the key).
- :func:`plan_merge` checks everything against the models' headers before any tensor is read.
- :func:`run_merge` streams tensor by tensor into sharded safetensors, atomically.
- :mod:`mol.merge.methods` holds the pure tensor math, one method per file.
- :class:`MergeConfig` and ``LinearMerge`` / ``SlerpMerge`` / ... are the seed API.
"""

from mol.merge._execute import MergeResult, merge_in_memory, run_merge, write_merge
from mol.merge._plan import MergeOptions, MergePlan, TensorTask, plan_merge
from mol.merge.api import (
    BaseMerge,
    BreadcrumbsMerge,
    BreadcrumbsTiesMerge,
    DareLinearMerge,
    DareTiesMerge,
    LinearMerge,
    MergeConfig,
    MergedModel,
    ModelStockMerge,
    MultiSlerpMerge,
    NuSlerpMerge,
    PassthroughMerge,
    SlerpMerge,
    TaskArithmeticMerge,
    TiesMerge,
)
from mol.merge.config import MergeConfiguration, load_merge_config
from mol.merge.methods import get_method, list_methods

__all__ = [
    "BaseMerge",
    "BreadcrumbsMerge",
    "BreadcrumbsTiesMerge",
    "DareLinearMerge",
    "DareTiesMerge",
    "LinearMerge",
    "MergeConfig",
    "MergeConfiguration",
    "MergeOptions",
    "MergePlan",
    "MergeResult",
    "MergedModel",
    "ModelStockMerge",
    "MultiSlerpMerge",
    "NuSlerpMerge",
    "PassthroughMerge",
    "SlerpMerge",
    "TaskArithmeticMerge",
    "TensorTask",
    "TiesMerge",
    "get_method",
    "list_methods",
    "load_merge_config",
    "merge_in_memory",
    "plan_merge",
    "run_merge",
    "write_merge",
]

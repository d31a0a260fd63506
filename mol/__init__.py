"""Mango: combine Hugging Face transformer language models by fusion, MoE assembly or merging.

The public API is re-exported here; everything else lives in private modules. Engines are
folders: ``mol.arch`` (what a model is), ``mol.io`` (loading and saving), ``mol.zoo`` (the
small models built from Python's own text), ``mol.eval``, ``mol.training``.
"""

from mol._errors import (
    CheckpointMismatchError,
    ConfigError,
    CorruptCheckpointError,
    ModelNotFoundError,
    MolError,
    UnsafeCheckpointError,
    UnsupportedArchitectureError,
)
from mol.arch import ArchitectureInfo, RopeInfo, UniversalArchitectureHandler, detect_architecture
from mol.fusion import (
    BottleneckAdapter,
    LinearAdapter,
    MoLConfig,
    MoLRuntime,
    SimpleRouter,
    TokenLevelRouter,
)
from mol.io import (
    LazyCheckpoint,
    atomic_output_dir,
    load_causal_lm,
    load_model_safe,
    load_tokenizer,
    save_model_safe,
)
from mol.merge import (
    BreadcrumbsMerge,
    BreadcrumbsTiesMerge,
    DareLinearMerge,
    DareTiesMerge,
    LinearMerge,
    MergeConfig,
    ModelStockMerge,
    MultiSlerpMerge,
    NuSlerpMerge,
    PassthroughMerge,
    SlerpMerge,
    TaskArithmeticMerge,
    TiesMerge,
    load_merge_config,
    run_merge,
)
from mol.moe.assembly import (
    CausalLMPool,
    MixtralForCausalLMMergingAlgorithm,
    MixtralMoEMergingAlgorithm,
    print_parameters,
)
from mol.moe.gating import MoEInference, MoEModel

__version__ = "0.1.0"

__all__ = [
    "MoEInference",
    "MoEModel",
    "CausalLMPool",
    "MixtralForCausalLMMergingAlgorithm",
    "MixtralMoEMergingAlgorithm",
    "print_parameters",
    "BottleneckAdapter",
    "LinearAdapter",
    "MoLConfig",
    "MoLRuntime",
    "SimpleRouter",
    "TokenLevelRouter",
    "BreadcrumbsMerge",
    "BreadcrumbsTiesMerge",
    "DareLinearMerge",
    "DareTiesMerge",
    "LinearMerge",
    "MergeConfig",
    "ModelStockMerge",
    "MultiSlerpMerge",
    "NuSlerpMerge",
    "PassthroughMerge",
    "SlerpMerge",
    "TaskArithmeticMerge",
    "TiesMerge",
    "load_merge_config",
    "run_merge",
    "ArchitectureInfo",
    "CheckpointMismatchError",
    "ConfigError",
    "CorruptCheckpointError",
    "LazyCheckpoint",
    "ModelNotFoundError",
    "MolError",
    "RopeInfo",
    "UnsafeCheckpointError",
    "UniversalArchitectureHandler",
    "UnsupportedArchitectureError",
    "atomic_output_dir",
    "detect_architecture",
    "load_causal_lm",
    "load_model_safe",
    "load_tokenizer",
    "save_model_safe",
]

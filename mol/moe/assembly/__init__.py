"""MoE assembly: fine-tuned dense models of one base become the experts of one sparse MoE.

The output is a standard Mixtral / Qwen2-MoE / Qwen3-MoE checkpoint (safetensors) that stock
transformers loads. Python: :class:`CausalLMPool` + :class:`MixtralForCausalLMMergingAlgorithm`
(the seed's API) or :func:`build_moe` on a :class:`MoEConfig`; command line: ``mol-merge moe
CONFIG OUT``.
"""

from mol.moe.assembly.api import (
    MixtralForCausalLMMergingAlgorithm,
    MixtralMoEMergingAlgorithm,
    ParameterCount,
    count_parameters,
    print_parameters,
)
from mol.moe.assembly.config import ExpertConfig, MoEConfig, load_moe_config
from mol.moe.assembly.export import AssemblyResult, MoEPlan, build_moe, compute_gates, plan_moe
from mol.moe.assembly.pool import CausalLMPool

__all__ = [
    "AssemblyResult",
    "CausalLMPool",
    "ExpertConfig",
    "MixtralForCausalLMMergingAlgorithm",
    "MixtralMoEMergingAlgorithm",
    "MoEConfig",
    "MoEPlan",
    "ParameterCount",
    "build_moe",
    "compute_gates",
    "count_parameters",
    "load_moe_config",
    "plan_moe",
    "print_parameters",
]

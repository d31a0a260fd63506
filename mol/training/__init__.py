"""Training MoL runtimes: the config, data packing, the objective and the trainer.

``MoLTrainer(runtime, TrainingConfig(...)).train(train_data, eval_data)`` trains adapters and
routers (experts frozen) and returns a :class:`TrainResult`; ``mol train CONFIG.yaml`` does
the same from one YAML file (see :mod:`mol.training.recipe`).
"""

from mol.training.config import TrainingConfig
from mol.training.data import as_blocks, pack_texts, read_texts, zoo_texts
from mol.training.losses import next_token_loss, router_losses, training_loss
from mol.training.trainer import MoLTrainer, TrainResult

__all__ = [
    "MoLTrainer",
    "TrainResult",
    "TrainingConfig",
    "as_blocks",
    "next_token_loss",
    "pack_texts",
    "read_texts",
    "router_losses",
    "training_loss",
    "zoo_texts",
]

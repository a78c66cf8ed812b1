"""Training: the sections it reads (:mod:`.config`, torch-free), the optimisation recipe, the loop and checkpoints."""

from .._exports import lazy_exports

_WHERE = {
    "TrainConfig": "config",
    "ClipPretrainConfig": "config",
    "PRECISIONS": "config",
    "build_optimizer": "optim",
    "learning_rate_at": "optim",
    "parameter_groups": "optim",
    "scaled_learning_rates": "optim",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)

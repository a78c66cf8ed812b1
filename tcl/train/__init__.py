"""Training: optimisation recipe (and, in later modules, the training loop and checkpoints)."""

from .optim import build_optimizer, learning_rate_at, parameter_groups, scaled_learning_rates

__all__ = ["build_optimizer", "learning_rate_at", "parameter_groups", "scaled_learning_rates"]

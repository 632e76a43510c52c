"""Training of the embedded world's models: the loop, data and recipes."""

from mergejax.training.trainer import OptimConfig, TrainResult, Trainer, data_mesh, get_trainer, lr_schedule, train

__all__ = ["OptimConfig", "TrainResult", "Trainer", "data_mesh", "get_trainer", "lr_schedule", "train"]

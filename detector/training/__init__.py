"""Training: the loop, its optimiser and schedule, checkpoints, the data it reads and what it reports.

``train(model_cfg, TrainConfig(...))`` is what ``python -m detector.train`` runs.
"""

from detector.training.loop import TrainConfig, Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]

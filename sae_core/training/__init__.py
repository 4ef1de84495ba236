"""SAE training: configuration, the multi-site trainer, schedules and checkpoints."""

from .config import TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "train"]

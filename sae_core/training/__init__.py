"""SAE training: configuration, the multi-site trainer, schedules and checkpoints."""

from .config import TrainConfig, add_config_arguments, config_from_args, parse_count
from .trainer import train

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args", "parse_count", "train"]

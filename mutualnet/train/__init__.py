"""Training: the mutual-learning step (and baselines), the schedule, the loop."""

from ..device import resolve_device
from .loop import TrainResult, default_out_dir, stored_config, train
from .schedule import CosineSchedule, build_optimizer, cosine_lr, param_groups
from .step import StepOutput, Subnet, distill_loss, sample_subnets, step_rng, train_step

__all__ = [
    "CosineSchedule", "StepOutput", "Subnet", "TrainResult", "build_optimizer", "cosine_lr",
    "default_out_dir", "distill_loss", "param_groups", "resolve_device", "sample_subnets",
    "step_rng", "stored_config", "train", "train_step",
]

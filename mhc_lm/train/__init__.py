"""Pretraining: typed run config, Accelerate/DeepSpeed trainer, checkpoints, logging, export.

    from mhc_lm.metrics import build_callbacks
    from mhc_lm.train import Trainer, load_run_config
    config = load_run_config("configs/tiny_cpu.yaml", ["train.max_steps=50"])
    Trainer(config, callbacks=build_callbacks(config)).fit()   # without callbacks: no stability metrics
"""

from mhc_lm.train.callbacks import BaseCallback, Callback
from mhc_lm.train.config import RunConfig, build_model_config, load_run_config
from mhc_lm.train.trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "RunConfig", "load_run_config", "build_model_config", "Callback", "BaseCallback"]

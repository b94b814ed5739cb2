"""Fine-tuning on your own data: `medsam2 train` and its Python API.

    from medsam2.train import load_config, train
    summary = train(load_config("finetune.yaml"))
    print(summary.model_path, summary.best_val_dsc)
"""

from medsam2.train.config import (
    TrainConfig,
    config_from_dict,
    example_config,
    load_config,
)
from medsam2.train.trainer import TrainingSummary, train

__all__ = ["TrainConfig", "TrainingSummary", "config_from_dict", "example_config", "load_config", "train"]

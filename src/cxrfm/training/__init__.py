"""Training: one generic loop (:mod:`cxrfm.training.loop`) and task-specific steps.

* :class:`~cxrfm.training.loop.Trainer` + :class:`~cxrfm.training.loop.TrainConfig`: AdamW,
  warm-up + cosine, accumulation, clipping, AMP, EMA, DDP, NaN guard, exact-resume checkpoints.
* :mod:`cxrfm.training.pretrain`: the HD-MAE pretraining task and its run config.
* :mod:`cxrfm.training.checkpoint`, :mod:`~cxrfm.training.distributed`,
  :mod:`~cxrfm.training.sampler`, :mod:`~cxrfm.training.randomness`: the pieces the loop uses.
"""

from cxrfm.training.loop import (
    BaseTask,
    NonFiniteLossError,
    StepContext,
    TrainConfig,
    Trainer,
    TrainingTask,
    TrainResult,
    batch_sample_ids,
)

__all__ = [
    "BaseTask",
    "NonFiniteLossError",
    "StepContext",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "batch_sample_ids",
]

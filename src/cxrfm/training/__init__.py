"""Training: the engine every recipe shares.

* :mod:`cxrfm.training.contract`: :class:`TrainConfig` (the ``train:`` section), :class:`StepContext`,
  the :class:`TrainingTask` protocol and :class:`BaseTask`, :class:`TrainResult`.
* :mod:`cxrfm.training.loop`: the one :class:`Trainer` (AdamW, warm-up + cosine, accumulation,
  clipping, AMP, EMA, DDP, NaN guard, exact-resume checkpoints, best-by-validation weights).
* :mod:`cxrfm.training.tasks`: one objective per file (MAE, segmentation, report generation,
  classification): its ``training_step``, validation and the config sections it reads.
* :mod:`~cxrfm.training.checkpoint`, :mod:`~cxrfm.training.optim`, :mod:`~cxrfm.training.distributed`,
  :mod:`~cxrfm.training.sampler`, :mod:`~cxrfm.training.randomness`, :mod:`~cxrfm.training.augment`:
  the pieces the loop and the tasks use.

The face imports nothing, so ``import cxrfm.training.contract`` stays light.
"""

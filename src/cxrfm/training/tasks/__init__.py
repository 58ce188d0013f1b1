"""One training objective per module; each imports the contract, models, data and metrics, never
another task or the loop.

- :mod:`~cxrfm.training.tasks.mae`: masked-autoencoder pretraining with context-aware masking.
- :mod:`~cxrfm.training.tasks.segmentation`: the lung segmenter (Dice + BCE).
- :mod:`~cxrfm.training.tasks.report`: report generation (teacher-forced cross-entropy).
- :mod:`~cxrfm.training.tasks.classification`: disease prediction (weighted BCE).
"""

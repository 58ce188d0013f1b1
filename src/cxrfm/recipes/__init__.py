"""Recipes: one system's run config and orchestration each (build, ``Trainer.fit``, select on
validation, score the test split once, write the run folder).

- :mod:`cxrfm.recipes.segmenter`: the lung segmenter (``cxrfm segment train``).
- :mod:`cxrfm.recipes.pretrain`: HD-MAE pretraining with context-aware masking (``cxrfm pretrain``).
- :mod:`cxrfm.recipes.report`: R2Gen report generation (``cxrfm report train``).
- :mod:`cxrfm.recipes.classify`: disease prediction, VTB / linear probe / fine-tuning (``cxrfm classify train``).
- :mod:`cxrfm.recipes.demo`: the main job, a recipe of the recipes above (``cxrfm demo``).

The system recipes are independent of each other (a checked contract); only the demo composes them.
"""

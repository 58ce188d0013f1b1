"""Disease classifiers on a cxrfm ViT encoder: VTB-style label-token fusion and pooled baselines.

* :class:`VTBClassifier`: label-name embeddings (MiniLM, stored with the model) fused with the
  image tokens in the encoder's last block; one logit per label token.
* :class:`PooledClassifier`: ``linear_probe`` (frozen encoder) and ``finetune`` (layer-wise lr decay).
* :func:`load_classifier` / ``save_pretrained``; :func:`weighted_bce`; heatmaps in
  :mod:`cxrfm.models.classify.explain`.
"""

from cxrfm.models.classify.base import (
    ClassifierBase,
    ClassifierConfig,
    build_classifier,
    load_classifier,
    weighted_bce,
)
from cxrfm.models.classify.label_embedding import LabelEmbedder, encode_label_names
from cxrfm.models.classify.pooled import PooledClassifier
from cxrfm.models.classify.vtb import VTBClassifier

__all__ = [
    "ClassifierBase",
    "ClassifierConfig",
    "LabelEmbedder",
    "PooledClassifier",
    "VTBClassifier",
    "build_classifier",
    "encode_label_names",
    "load_classifier",
    "weighted_bce",
]

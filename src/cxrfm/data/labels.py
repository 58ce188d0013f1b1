"""The shared finding vocabulary and alignment between label spaces.

Every dataset maps its own label names onto :data:`FINDINGS`: the 14 CheXpert observations first
(in CheXpert's order), then findings that only some datasets name. Label values follow CheXpert:
``1`` positive, ``0`` negative, ``-1`` uncertain, ``NaN`` not stated / not labelled by this dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cxrfm.vocabulary import CHEXPERT_FINDINGS


# Findings some datasets label that CheXpert does not.
EXTRA_FINDINGS: tuple[str, ...] = (
    "Nodule",
    "Mass",
    "Infiltration",
    "Emphysema",
    "Fibrosis",
    "Pleural Thickening",
    "Hernia",
    "COVID-19",
)

FINDINGS: tuple[str, ...] = CHEXPERT_FINDINGS + EXTRA_FINDINGS

# Spelling variants seen in public datasets -> our canonical name.
SYNONYMS: dict[str, str] = {
    "effusion": "Pleural Effusion",
    "pleural_effusion": "Pleural Effusion",
    "pleural thickening": "Pleural Thickening",
    "pleural_thickening": "Pleural Thickening",
    "no finding": "No Finding",
    "no_finding": "No Finding",
    "normal": "No Finding",
    "covid19": "COVID-19",
    "covid-19": "COVID-19",
    "opacity": "Lung Opacity",
    "lung opacity": "Lung Opacity",
    "airspace opacity": "Lung Opacity",
    "pneumothorax": "Pneumothorax",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "atelectasis": "Atelectasis",
    "pneumonia": "Pneumonia",
    "edema": "Edema",
    "nodule": "Nodule",
    "mass": "Mass",
    "infiltration": "Infiltration",
    "emphysema": "Emphysema",
    "fibrosis": "Fibrosis",
    "hernia": "Hernia",
    "fracture": "Fracture",
    "support devices": "Support Devices",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
    "lung lesion": "Lung Lesion",
    "pleural other": "Pleural Other",
}


def canonical_finding(name: str) -> str | None:
    """Map a dataset's label name to our vocabulary, or None when it has no counterpart."""
    if name in FINDINGS:
        return name
    key = name.strip().lower().replace("-", " ").replace("_", " ")
    for candidate in (key, key.replace(" ", "_"), name.strip().lower()):
        if candidate in SYNONYMS:
            return SYNONYMS[candidate]
    for finding in FINDINGS:
        if finding.lower() == key:
            return finding
    return None


def labels_from_mapping(values: Mapping[str, float], vocabulary: Sequence[str] = FINDINGS) -> torch.Tensor:
    """``{"Effusion": 1, "Nodule": 0}`` -> a ``(len(vocabulary),)`` float tensor, NaN elsewhere.

    Names are canonicalised first; a name with no counterpart in ``vocabulary`` is ignored.
    """
    out = torch.full((len(vocabulary),), float("nan"))
    index = {name: i for i, name in enumerate(vocabulary)}
    for name, value in values.items():
        canonical = canonical_finding(name)
        if canonical is not None and canonical in index and value is not None:
            v = float(value)
            if not np.isnan(v):
                out[index[canonical]] = v
    return out


def align_labels(labels: torch.Tensor, source: Sequence[str], target: Sequence[str]) -> torch.Tensor:
    """Re-express ``labels`` (``(..., len(source))``) over ``target``; missing entries become NaN."""
    out = torch.full((*labels.shape[:-1], len(target)), float("nan"), dtype=labels.dtype)
    source_index = {name: i for i, name in enumerate(source)}
    for j, name in enumerate(target):
        if name in source_index:
            out[..., j] = labels[..., source_index[name]]
    return out

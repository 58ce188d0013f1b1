"""The 14 CheXpert observations: the one list that datasets, labelers and metrics share.

A dependency-free module so both ``cxrfm.data`` (label spaces) and ``cxrfm.evaluation`` (the
report labeler, which may not import ``data``) use the same names in the same order.
"""

CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

"""Disease prediction with a trained classifier folder: probabilities, decisions and heatmaps.

A classifier folder is ``config.json`` + ``model.safetensors`` (``save_pretrained``) and
``thresholds.json``: one decision threshold per label, chosen on the validation split (per-label
maximum F1) by the recipe that trained it, with the dataset it was trained on.

``ClassificationPipeline.from_pretrained(model_dir)(images)`` -> :class:`ClassificationOutput`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrfm.data.sample import collate_any, collate_samples
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.classify import load_classifier
from cxrfm.models.classify.explain import label_heatmaps
from cxrfm.models.pretrained import read_json_object
from cxrfm.utils.runtime import move_to_device, resolve_device

log = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"


@dataclass
class ClassificationOutput:
    """``probabilities (B, K)`` and ``positives (B, K)`` (probability >= the label's threshold)."""

    probabilities: np.ndarray
    positives: np.ndarray
    label_names: tuple[str, ...]


class ClassificationPipeline:
    """A classifier in eval mode with its validation thresholds (0.5 where none were saved)."""

    def __init__(self, model: nn.Module, thresholds: np.ndarray | None = None, device: str | torch.device = "auto", model_dir: Path | None = None):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.thresholds = np.full(model.num_labels, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.model_dir = model_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "auto") -> "ClassificationPipeline":
        model = load_classifier(model_dir)
        thresholds = load_thresholds(model_dir, model.label_names)
        if thresholds is None:
            log.warning("%s has no %s: calling positives at p >= 0.5", model_dir, THRESHOLDS_FILE)
        return cls(model, thresholds, device, Path(model_dir))

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.model.label_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.config.encoder.image_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> ClassificationOutput:
        """``images (B, 1, H, W)`` in [0, 1] at :attr:`image_size` -> probabilities and decisions."""
        probabilities = torch.sigmoid(self.model(images.to(self.device))).float().cpu().numpy().astype(np.float64)
        return ClassificationOutput(probabilities, probabilities >= self.thresholds, self.label_names)

    def predict_dataset(self, dataset: Dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, labels)``, both ``(N, K)`` (labels NaN where a sample has none)."""
        return predict_dataset(self.model, dataset, batch_size, self.device)

    def heatmaps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(heatmaps (B, K, H, W) in [0, 1], probabilities (B, K))`` on CPU (VTB rollout / Grad-CAM)."""
        heatmaps, probabilities = label_heatmaps(self.model, images.to(self.device))
        return heatmaps.cpu(), probabilities.cpu()

    def save_heatmaps(self, dataset: Dataset, path: Path, count: int = 4) -> Path:
        """The first ``count`` images of ``dataset`` with each label's heatmap and probability."""
        from cxrfm.figures.heatmaps import save_heatmap_figure

        batch = collate_samples([dataset[i] for i in range(min(count, len(dataset)))])
        heatmaps, probabilities = self.heatmaps(batch.images)
        save_heatmap_figure(path, batch.images, heatmaps, probabilities, self.label_names, batch.labels, self.thresholds)
        log.info("wrote %s", path)
        return Path(path)


def save_classifier(model: nn.Module, directory: Path, thresholds: np.ndarray, extra: dict | None = None) -> Path:
    """``save_pretrained`` + ``thresholds.json`` (chosen on validation) in ``directory``."""
    directory = Path(model.save_pretrained(directory))
    record = {
        "label_names": list(model.label_names),
        "thresholds": [float(t) for t in thresholds],
        "selected_on": "validation (per-label maximum F1)",
        **(extra or {}),
    }
    (directory / THRESHOLDS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return directory


def load_thresholds(model_dir: str | Path, label_names: tuple[str, ...]) -> np.ndarray | None:
    """The validation thresholds saved beside a classifier, or None when there are none.

    Raises:
        CheckpointError: ``thresholds.json`` is not JSON, or its ``thresholds`` are not one number
            in [0, 1] per label. ConfigError: it was written for other labels.
    """
    path = Path(model_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    record = read_json_object(path, "a JSON object with 'label_names' and 'thresholds'")
    saved_names = record.get("label_names", [])
    if not isinstance(saved_names, list):
        raise CheckpointError(path, f"field 'label_names' must be a list of label names, got {saved_names!r}")
    if tuple(saved_names) != tuple(label_names):
        raise ConfigError(str(path), f"thresholds are for {record.get('label_names')}, the model predicts {list(label_names)}")
    thresholds = record.get("thresholds")
    if (
        not isinstance(thresholds, list)
        or len(thresholds) != len(label_names)
        or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0 for t in thresholds)
    ):
        raise CheckpointError(path, f"field 'thresholds' must be {len(label_names)} numbers in [0, 1], one per label, got {thresholds!r}"[:400])
    return np.asarray(thresholds, dtype=np.float64)


def saved_dataset(model_dir: str | Path) -> dict:
    """``{"kind", "options"}`` of the dataset the classifier was trained on ({} when not recorded)."""
    path = Path(model_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    dataset = read_json_object(path).get("dataset") or {}
    if not isinstance(dataset, dict):
        raise CheckpointError(path, f"field 'dataset' must be a mapping, got {dataset!r}"[:300])
    return dict(dataset)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 32, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, labels)``, both ``(N, K)`` (labels NaN where a sample has none).

    ``dataset`` yields :class:`CXRSample` (images) or :class:`TrunkTokenDataset` items.
    """
    was_training = model.training
    model.eval()
    probabilities, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_any):
        logits, batch_labels = model_outputs(model, move_to_device(batch, torch.device(device)))
        probabilities.append(torch.sigmoid(logits).float().cpu())
        labels.append(torch.full_like(probabilities[-1], float("nan")) if batch_labels is None else batch_labels.float().cpu())
    model.train(was_training)
    return torch.cat(probabilities).numpy().astype(np.float64), torch.cat(labels).numpy().astype(np.float64)


def model_outputs(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits (B, K), labels (B, K) or None)`` of an image batch or a cached-token batch."""
    if isinstance(batch, dict):
        return model(trunk_tokens=batch["trunk_tokens"]), batch["labels"]
    return model(batch.images), batch.labels

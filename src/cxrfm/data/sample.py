"""One sample interface for every dataset, and the collate function that batches it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class CXRSample:
    """One chest X-ray with whatever a dataset knows about it.

    Attributes:
        image: ``(1, H, W)`` float32 in ``[0, 1]`` (the toolkit's pixel convention).
        lung_mask: ``(1, H, W)`` float32 in ``{0, 1}`` (1 = lung field) or None.
        labels: ``(K,)`` float32 over the dataset's ``label_names`` (1 / 0 / -1 uncertain /
            NaN unknown) or None.
        findings, impression: report sections or None.
        meta: ``path``, ``view`` (PA/AP/LATERAL/...), ``patient_id``, ``study_id``, ``split`` and any
            dataset-specific fields (plain Python values).
    """

    image: torch.Tensor
    lung_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    findings: str | None = None
    impression: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> str | None:
        """Findings and impression joined, as most report-generation work uses them."""
        parts = [p.strip() for p in (self.findings, self.impression) if p and p.strip()]
        return " ".join(parts) if parts else None


@dataclass
class CXRBatch:
    """A batch of samples. Optional fields are None when no sample has them.

    Attributes:
        images: ``(B, 1, H, W)``.
        lung_masks: ``(B, 1, H, W)`` or None; samples without a mask get NaN-filled masks and
            ``has_lung_mask`` False.
        has_lung_mask: ``(B,)`` bool.
        labels: ``(B, K)`` or None.
        findings, impressions: lists of length B (entries may be None).
        meta: list of B dicts.
    """

    images: torch.Tensor
    lung_masks: torch.Tensor | None
    has_lung_mask: torch.Tensor
    labels: torch.Tensor | None
    findings: list[str | None]
    impressions: list[str | None]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CXRBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return CXRBatch(
            images=move(self.images),
            lung_masks=move(self.lung_masks),
            has_lung_mask=move(self.has_lung_mask),
            labels=move(self.labels),
            findings=self.findings,
            impressions=self.impressions,
            meta=self.meta,
        )


def collate_samples(samples: list[CXRSample]) -> CXRBatch:
    """Stack samples of one image size into a :class:`CXRBatch`."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    sizes = {tuple(s.image.shape) for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"samples have different image shapes {sorted(sizes)}; resize them in the dataset")
    images = torch.stack([s.image for s in samples])
    has_mask = torch.tensor([s.lung_mask is not None for s in samples])
    masks = None
    if has_mask.any():
        masks = torch.stack(
            [s.lung_mask if s.lung_mask is not None else torch.full_like(s.image, float("nan")) for s in samples]
        )
    labels = None
    if any(s.labels is not None for s in samples):
        width = next(s.labels.shape[0] for s in samples if s.labels is not None)
        labels = torch.stack(
            [s.labels if s.labels is not None else torch.full((width,), float("nan")) for s in samples]
        )
    return CXRBatch(
        images=images,
        lung_masks=masks,
        has_lung_mask=has_mask,
        labels=labels,
        findings=[s.findings for s in samples],
        impressions=[s.impression for s in samples],
        meta=[s.meta for s in samples],
    )


def collate_any(samples: list) -> Any:
    """:func:`collate_samples` for :class:`CXRSample` lists, torch's ``default_collate`` otherwise
    (e.g. dicts of cached tensors)."""
    from torch.utils.data import default_collate

    if samples and isinstance(samples[0], CXRSample):
        return collate_samples(samples)
    return default_collate(samples)


def collate_images(samples: list[CXRSample]) -> torch.Tensor:
    """``(B, 1, H, W)``: the images of ``samples`` (labels, masks and reports left out)."""
    return torch.stack([sample.image for sample in samples])

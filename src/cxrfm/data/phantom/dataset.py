"""One phantom by seed (:func:`generate_phantom`) and many as a dataset (:class:`PhantomDataset`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from cxrfm.data.labels import FINDINGS
from cxrfm.data.phantom.config import DEFAULT_FINDING_PROBS, PhantomCase, PhantomConfig, check_seed, check_size
from cxrfm.data.phantom.findings import canonical_finding_keys
from cxrfm.data.phantom.render import ChestPhantom
from cxrfm.data.sample import CXRSample


def generate_phantom(
    seed: int,
    size: tuple[int, int] | None = None,
    findings: Mapping[str, float | Mapping[str, Any]] | None = None,
    *,
    finding_probs: Mapping[str, float] | None = None,
    config: PhantomConfig | None = None,
) -> PhantomCase:
    """One phantom PA chest radiograph.

    Args:
        seed: non-negative integer; the same seed gives a bit-identical case.
        size: ``(H, W)``; default ``config.size`` (512 x 512).
        findings: findings to force, ``{name: severity in [0, 1]}`` or
            ``{name: {"severity": s, "side": "left", "lobe": "RUL"}}``; severity 0 forces absence.
        finding_probs: probabilities for drawing the other findings at random (default: none, a
            normal case unless ``findings`` says otherwise).
        config: drawing options.

    Returns:
        a :class:`PhantomCase`.
    """
    config = config or PhantomConfig()
    if size is not None:
        config = dataclasses.replace(config, size=check_size(size))
    return ChestPhantom(config).generate(seed, findings=findings, finding_probs=finding_probs)


# Default seed ranges per split, far enough apart that splits never share a phantom.
SPLIT_SEED_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class PhantomDataset(Dataset):
    """``num_samples`` phantom radiographs as :class:`CXRSample` (the embedded default dataset).

    Item ``i`` is ``generate_phantom(seed + i)``, so it is deterministic and cheap to regenerate;
    nothing is cached or downloaded.

    Args:
        num_samples: dataset length.
        image_size: ``(H, W)`` of every image.
        seed: seed of item 0; default by split (train 0, val 1,000,000, test 2,000,000) so
            that splits never overlap.
        finding_probs: per-finding probabilities of random findings (``{}`` for all-normal).
        split: recorded in each sample's meta.
        config: drawing options (its ``size`` is replaced by ``image_size``).
        mask: which mask becomes ``CXRSample.lung_mask``: ``"lung"`` (lung fields) or
            ``"chest"`` (thoracic cavity).

    Attributes:
        label_names: :data:`cxrfm.data.labels.FINDINGS` (labels are 1 / 0, never unknown).
    """

    label_names: tuple[str, ...] = FINDINGS

    def __init__(
        self,
        num_samples: int,
        image_size: tuple[int, int] = (256, 256),
        seed: int | None = None,
        finding_probs: Mapping[str, float] | None = None,
        split: str = "train",
        config: PhantomConfig | None = None,
        mask: str = "lung",
    ):
        if int(num_samples) < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if mask not in ("lung", "chest"):
            raise ValueError(f"mask must be 'lung' or 'chest', got {mask!r}")
        self.num_samples = int(num_samples)
        self.seed = check_seed(SPLIT_SEED_OFFSETS.get(split, 0) if seed is None else seed)
        self.finding_probs = dict(DEFAULT_FINDING_PROBS if finding_probs is None else finding_probs)
        canonical_finding_keys(self.finding_probs, "finding_probs")  # fail now, not in a worker
        self.split = split
        self.mask = mask
        self.phantom = ChestPhantom(dataclasses.replace(config or PhantomConfig(), size=check_size(image_size)))

    def __len__(self) -> int:
        return self.num_samples

    def case(self, index: int) -> PhantomCase:
        """The full :class:`PhantomCase` behind item ``index`` (with chest and heart masks)."""
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} phantoms")
        return self.phantom.generate(self.seed + index, finding_probs=self.finding_probs)

    def __getitem__(self, index: int) -> CXRSample:
        sample = self.case(index).to_sample(mask=self.mask)
        sample.meta["split"] = self.split
        return sample

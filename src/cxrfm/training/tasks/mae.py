"""The masked-autoencoder objective of HD-MAE pretraining, with context-aware masking.

One step: chest regions for the batch (from the region provider the recipe built: segmenter /
classical / the reference rectangle / masks shipped with the data) -> per-patch inside fractions ->
context-aware masker with per-sample noise keyed by ``(seed, epoch, sample index)`` -> one MAE
forward -> pixel MSE on the masked patches. Keying the noise per sample (not per batch position or
rank) is what lets a 2-process run mask exactly like a 1-process run at the same global batch, and
a resumed run like an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cxrfm.errors import ConfigError
from cxrfm.figures.reconstruction import save_reconstruction_figure
from cxrfm.models.masking import ContextAwareMasker, RandomMasker
from cxrfm.training.augment import AugmentSection, crop_and_jitter
from cxrfm.training.checkpoint import unwrap_model
from cxrfm.training.contract import BaseTask, StepContext, batch_sample_ids
from cxrfm.training.randomness import STREAM_FIGURE, STREAM_MASKING, hashed_uniform
from cxrfm.utils.patch_grid import patch_inside_fraction

log = logging.getLogger(__name__)

RegionSourceName = Literal["segmenter", "classical", "rectangle", "given"]


@dataclass
class MaskingSection:
    """Which patches the encoder sees.

    ``kind: context`` masks ``ratio_inside`` of the patches inside the chest region and
    ``ratio_outside`` of the rest (paper: 0.95 / 0.85); ``kind: random`` masks ``mask_ratio``
    uniformly (MAE). A patch is inside when at least ``inside_threshold`` of it is in the region.
    ``region`` says where the region comes from; ``region_fallback`` covers samples without a
    given mask; ``segmenter_weights`` is a ``LungSegmenter.save_pretrained`` folder.
    ``cache_regions`` computes each sample's region once, on the un-augmented image, and reuses it
    (random crops transform it together with the image): the segmenter then costs one forward per
    sample per run instead of one per step, at one ``(H, W)`` byte mask per sample of memory.
    """

    kind: Literal["random", "context"] = "context"
    mask_ratio: float = 0.75
    ratio_inside: float = 0.95
    ratio_outside: float = 0.85
    inside_threshold: float = 0.5
    region: RegionSourceName = "rectangle"
    region_fallback: Literal["segmenter", "classical", "rectangle"] | None = None
    segmenter_weights: str | None = None
    cache_regions: bool = False


@dataclass
class FigureSection:
    """Reconstruction figures (cadence and sample count live in ``train``)."""

    draw_contour: bool = True
    masked_fill: float = 0.5


def build_masker(section: MaskingSection):
    try:
        if section.kind == "random":
            return RandomMasker(section.mask_ratio)
        return ContextAwareMasker(section.ratio_inside, section.ratio_outside, section.inside_threshold)
    except ValueError as exc:
        raise ConfigError("masking", str(exc)) from None


class MAEPretrainTask(BaseTask):
    """The MAE step for :class:`~cxrfm.training.loop.Trainer` (batches are :class:`CXRBatch`).


    Args:
        masking: the masking section (``cache_regions`` is read here; the masker and the region
            provider are built by the recipe).
        region_provider: ``provider(images, given_masks) -> (B, 1, H, W)`` chest regions
            (:class:`cxrfm.anatomy.regions.ChestRegionProvider`).
        masker: a token masker; None builds it from ``masking``.
        augment, figures: the ``augment`` and ``figures`` sections.
    """

    def __init__(
        self,
        masking: MaskingSection,
        region_provider,
        *,
        masker=None,
        augment: AugmentSection | None = None,
        figures: FigureSection | None = None,
    ):
        self.masking = masking
        self.masker = masker if masker is not None else build_masker(masking)
        self.region_provider = region_provider
        self.augment_section = augment or AugmentSection()
        self.figures = figures or FigureSection()
        self._region_cache: dict[int, torch.Tensor] = {}  # sample id -> (1, H, W) uint8, CPU

    def cached_regions(self, images: torch.Tensor, given_masks: torch.Tensor | None, sample_ids: torch.Tensor) -> torch.Tensor:
        """Regions ``(B, 1, H, W)`` of un-augmented ``images``, computed once per sample id."""
        ids = sample_ids.tolist()
        missing = [i for i, sample_id in enumerate(ids) if sample_id not in self._region_cache]
        if missing:
            rows = torch.tensor(missing, device=images.device)
            computed = self.region_provider(images[rows], None if given_masks is None else given_masks[rows])
            for row, region in zip(missing, computed):
                self._region_cache[ids[row]] = (region > 0.5).to(torch.uint8).cpu()
        return torch.stack([self._region_cache[i] for i in ids]).to(images.device, images.dtype)

    def mask_batch(
        self,
        model: nn.Module,
        images: torch.Tensor,
        given_masks: torch.Tensor | None,
        sample_ids: torch.Tensor,
        *,
        seed: int,
        epoch: int,
        stream: int,
        regions: torch.Tensor | None = None,
    ):
        """Chest regions ``(B, 1, H, W)`` and the :class:`MaskingResult` for ``images``.

        ``regions``, when given (the cached ones), are used as they are instead of asking the provider.
        """
        core = _core(model)
        if regions is None:
            regions = self.region_provider(images, given_masks)
        inside = patch_inside_fraction(regions, core.patch_size)  # (B, N)
        noise = hashed_uniform(sample_ids.to(images.device), core.num_patches, seed=seed, epoch=epoch, stream=stream)
        masking = self.masker(images.shape[0], core.num_patches, inside_fraction=inside, noise=noise, device=images.device)
        return regions, masking

    def augment(self, images: torch.Tensor, masks: torch.Tensor | None, sample_ids: torch.Tensor, ctx: StepContext):
        return crop_and_jitter(self.augment_section, images, sample_ids, seed=ctx.seed, epoch=ctx.epoch, masks=masks)

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, Any]:
        sample_ids = batch_sample_ids(batch)
        if self.masking.cache_regions:
            # Regions of the un-augmented images, then cropped together with them.
            cached = self.cached_regions(batch.images, batch.lung_masks, sample_ids)
            images, regions = self.augment(batch.images, cached, sample_ids, ctx)
            given_masks = None
        else:
            images, given_masks = self.augment(batch.images, batch.lung_masks, sample_ids, ctx)
            regions = None
        regions, masking = self.mask_batch(
            model, images, given_masks, sample_ids, seed=ctx.seed, epoch=ctx.epoch, stream=STREAM_MASKING, regions=regions
        )
        output = model(images, masking)  # the one forward of this step
        return {
            "loss": output.loss,
            "mask_ratio": masking.mask.mean(),
            "mask_ratio_inside": _nanmean(masking.ratio_inside),
            "mask_ratio_outside": _nanmean(masking.ratio_outside),
            "region_fraction": regions.mean(),
        }

    def on_figure(self, model: nn.Module, batch, step: int, out_dir: Path) -> Path:
        """Original / masked / reconstruction of the fixed figure batch, masked the same way each time."""
        sample_ids = batch_sample_ids(batch)
        regions, masking = self.mask_batch(model, batch.images, batch.lung_masks, sample_ids, seed=0, epoch=0, stream=STREAM_FIGURE)
        reconstructed = model.reconstruct(batch.images, masking)
        masked = model.masked_images(batch.images, masking.mask, fill=self.figures.masked_fill)
        path = Path(out_dir) / f"reconstruction_step_{step:07d}.png"
        save_reconstruction_figure(
            path,
            batch.images,
            masked,
            reconstructed,
            regions if self.figures.draw_contour else None,
            title=f"step {step}: masked {masking.mask.mean().item():.1%}",
        )
        log.info("wrote %s", path)
        return path

    def on_train_end(self, model: nn.Module, ema_model: nn.Module | None, output_dir: Path) -> None:
        """Export the encoder (the EMA weights when EMA is on) for downstream tasks."""
        source = ema_model if ema_model is not None else model
        path = source.save_encoder(Path(output_dir) / "encoder")
        log.info("saved the encoder%s to %s", " (EMA weights)" if ema_model is not None else "", path)


def _core(model: nn.Module) -> nn.Module:
    """The MaskedAutoencoder inside DDP / compile wrappers (for its patch geometry)."""
    return unwrap_model(model)


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    finite = ~torch.isnan(values)
    if not finite.any():
        return torch.tensor(float("nan"), device=values.device)
    return values[finite].mean()

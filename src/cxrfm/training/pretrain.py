"""HD-MAE pretraining: the masked-autoencoder task for the generic loop, and its run config.

One step: chest regions for the batch (segmenter / classical / the reference rectangle / masks
shipped with the data) -> per-patch inside fractions -> context-aware masker with per-sample noise
keyed by ``(seed, epoch, sample index)`` -> one MAE forward -> pixel MSE on the masked patches.
Keying the noise per sample (not per batch position or rank) is what lets a 2-process run mask
exactly like a 1-process run at the same global batch, and a resumed run like an uninterrupted one.

Compared with the HD-MAE reference code (see ``shared/notes/reference-implementations.md``): the
region is each image's own segmentation rather than a fixed rectangle (the rectangle remains as
``region: rectangle``); masking is vectorised rather than a per-sample Python loop; the model runs
once per step (the reference ran it twice); the learning-rate schedule is applied; biases and norms
train (only their weight decay is off); the random-resized-crop augmentation is actually used when
enabled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, IterableDataset

from cxrfm.config import from_dict
from cxrfm.errors import ConfigError
from cxrfm.training.augment import UNIFORMS_PER_SAMPLE, intensity_jitter, random_resized_crop
from cxrfm.training.figures import save_reconstruction_figure
from cxrfm.training.loop import BaseTask, StepContext, TrainConfig, Trainer, TrainResult, batch_sample_ids
from cxrfm.training.randomness import STREAM_AUGMENT, STREAM_FIGURE, STREAM_MASKING, hashed_uniform

log = logging.getLogger(__name__)

RegionSourceName = Literal["segmenter", "classical", "rectangle", "given"]


@dataclass
class ModelSection:
    """``preset``: a key of ``cxrfm.models.MAE_PRESETS``; ``overrides``: MAE or encoder fields
    (e.g. ``{image_size: [256, 256], depth: 4}``)."""

    preset: str = "mae-tiny-cpu"
    overrides: dict[str, Any] = field(default_factory=dict)


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
class DataSource:
    """One training source. ``kind``: ``phantom``, ``shards`` or a ``cxrfm.data.registry`` kind
    (``folder``, ``manifest``, ``openist``, ``covid``, ...); defaults to the source's name.
    ``root``: its folder (shards: a folder or a brace pattern of ``.tar`` files).
    ``num_samples``/``seed``: phantom only. ``cache``: keep decoded samples in memory after first
    use (small sets, ``num_workers: 0``). ``options``: passed to the dataset."""

    kind: str | None = None
    root: str | None = None
    split: str | None = "train"
    num_samples: int = 256
    seed: int = 0
    cache: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Named sources, concatenated when there are several (a "mixed" run)::

        sources:
          openist: {root: ../shared/data/lung_seg_openist}
          covid: {root: ../shared/data/covid_chestxray, options: {mask_source: any}}

    Names make overrides easy: ``--set data.sources.openist.root=/data/openist``.
    ``image_size`` defaults to the model's.
    """

    sources: dict[str, DataSource] = field(default_factory=lambda: {"phantom": DataSource()})
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # The YAML loader leaves mapping values as plain dicts: build (and check) each source here.
        built = {}
        for name, source in self.sources.items():
            if not isinstance(source, DataSource):
                source = from_dict(DataSource, source, prefix=f"data.sources.{name}")
            if source.kind is None:
                source.kind = name
            built[name] = source
        self.sources = built


@dataclass
class AugmentSection:
    """Random resized crop (area ``crop_scale``, aspect ``crop_ratio``) and intensity jitter."""

    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    intensity_jitter: float = 0.0


@dataclass
class FigureSection:
    """Reconstruction figures (cadence and sample count live in ``train``)."""

    draw_contour: bool = True
    masked_fill: float = 0.5


@dataclass
class PretrainConfig:
    """The whole pretraining run: ``cxrfm pretrain --config <this as YAML>``."""

    model: ModelSection = field(default_factory=ModelSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    figures: FigureSection = field(default_factory=FigureSection)
    train: TrainConfig = field(default_factory=TrainConfig)


# ------------------------------------------------------------------------------------ builders
def build_model_config(section: ModelSection, image_size: tuple[int, int] | None = None):
    """The :class:`~cxrfm.models.MAEConfig` of ``section`` (at ``image_size`` unless overridden)."""
    from cxrfm.models import mae_config

    overrides = {key: tuple(value) if key in ("image_size", "patch_size") else value for key, value in section.overrides.items()}
    if image_size is not None:
        overrides.setdefault("image_size", tuple(image_size))
    try:
        return mae_config(section.preset, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.overrides", str(exc)) from None


def build_model(section: ModelSection, image_size: tuple[int, int] | None = None) -> nn.Module:
    """The :class:`~cxrfm.models.MaskedAutoencoder` of ``section``."""
    from cxrfm.models import MaskedAutoencoder

    return MaskedAutoencoder(build_model_config(section, image_size))


def build_masker(section: MaskingSection):
    from cxrfm.models import ContextAwareMasker, RandomMasker

    try:
        if section.kind == "random":
            return RandomMasker(section.mask_ratio)
        return ContextAwareMasker(section.ratio_inside, section.ratio_outside, section.inside_threshold)
    except ValueError as exc:
        raise ConfigError("masking", str(exc)) from None


def build_region_provider(section: MaskingSection):
    """A :class:`~cxrfm.anatomy.regions.ChestRegionProvider` for the configured source."""
    from cxrfm.anatomy.regions import ChestRegionProvider

    segmenter = None
    if "segmenter" in (section.region, section.region_fallback):
        if not section.segmenter_weights:
            raise ConfigError("masking.segmenter_weights", "region 'segmenter' needs a LungSegmenter folder")
        from cxrfm.anatomy.segmenter import LungSegmenter

        segmenter = LungSegmenter.from_pretrained(section.segmenter_weights)
        segmenter.eval()
    fallback = section.region_fallback if section.region == "given" else None
    try:
        return ChestRegionProvider(section.region, segmenter, fallback=fallback)
    except ValueError as exc:
        raise ConfigError("masking.region", str(exc)) from None


def build_pretrain_dataset(section: DataSection, image_size: tuple[int, int]) -> Dataset:
    """All sources at ``image_size``; one dataset, or their concatenation."""
    if not section.sources:
        raise ConfigError("data.sources", "at least one source is needed")
    datasets = []
    for name, source in section.sources.items():
        dataset = _build_source(source, image_size, f"data.sources.{name}")
        if source.cache:
            if isinstance(dataset, IterableDataset):
                raise ConfigError(f"data.sources.{name}.cache", "shard streams cannot be cached")
            dataset = CachedDataset(dataset)
        datasets.append(dataset)
    if len(datasets) == 1:
        return datasets[0]
    if any(isinstance(dataset, IterableDataset) for dataset in datasets):
        raise ConfigError("data.sources", "shard streams cannot be mixed with other sources; write them into shards")
    return ConcatDataset(datasets)


class CachedDataset(Dataset):
    """Keeps each sample after its first load (phantoms are drawn, JPEGs decoded, only once).

    The cache lives in the process that loads, so use it with ``num_workers: 0`` (each worker
    would otherwise hold its own copy).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.cache:
            self.cache[index] = self.dataset[index]
        return self.cache[index]


def _build_source(source: DataSource, image_size: tuple[int, int], field_name: str) -> Dataset:
    kind = source.kind.strip().lower()
    if kind == "phantom":
        from cxrfm.data.phantom import PhantomDataset

        return PhantomDataset(source.num_samples, image_size, seed=source.seed, **source.options)
    if source.root is None:
        raise ConfigError(f"{field_name}.root", f"source kind {source.kind!r} needs a root folder")
    if kind == "shards":
        from cxrfm.data.shards import ShardDataset

        return ShardDataset(source.root, **source.options)
    from cxrfm.data.registry import build_dataset

    root = Path(source.root).expanduser()
    if not root.exists():
        raise ConfigError(f"{field_name}.root", f"{root} does not exist")
    try:
        return build_dataset(kind, root, split=source.split, image_size=image_size, **source.options)
    except ValueError as exc:
        raise ConfigError(f"{field_name}.kind", str(exc)) from None


# ---------------------------------------------------------------------------------------- task
class MAEPretrainTask(BaseTask):
    """The MAE step for :class:`~cxrfm.training.loop.Trainer` (batches are :class:`CXRBatch`)."""

    def __init__(self, config: PretrainConfig, masker=None, region_provider=None):
        self.config = config
        self.masker = masker if masker is not None else build_masker(config.masking)
        self.region_provider = region_provider if region_provider is not None else build_region_provider(config.masking)
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
        from cxrfm.models import patch_inside_fraction

        core = _core(model)
        if regions is None:
            regions = self.region_provider(images, given_masks)
        inside = patch_inside_fraction(regions, core.patch_size)  # (B, N)
        noise = hashed_uniform(sample_ids.to(images.device), core.num_patches, seed=seed, epoch=epoch, stream=stream)
        masking = self.masker(images.shape[0], core.num_patches, inside_fraction=inside, noise=noise, device=images.device)
        return regions, masking

    def augment(self, images: torch.Tensor, masks: torch.Tensor | None, sample_ids: torch.Tensor, ctx: StepContext):
        section = self.config.augment
        if not section.random_resized_crop and not section.intensity_jitter:
            return images, masks
        uniforms = hashed_uniform(sample_ids.to(images.device), UNIFORMS_PER_SAMPLE, seed=ctx.seed, epoch=ctx.epoch, stream=STREAM_AUGMENT)
        if section.random_resized_crop:
            images, masks = random_resized_crop(images, uniforms[:, :4], scale=section.crop_scale, ratio=section.crop_ratio, masks=masks)
        if section.intensity_jitter:
            images = intensity_jitter(images, uniforms[:, 4:6], section.intensity_jitter)
        return images, masks

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, Any]:
        sample_ids = batch_sample_ids(batch)
        if self.config.masking.cache_regions:
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
        masked = model.masked_images(batch.images, masking.mask, fill=self.config.figures.masked_fill)
        path = Path(out_dir) / f"reconstruction_step_{step:07d}.png"
        save_reconstruction_figure(
            path,
            batch.images,
            masked,
            reconstructed,
            regions if self.config.figures.draw_contour else None,
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
    from cxrfm.training.checkpoint import unwrap_model

    return unwrap_model(model)


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    finite = ~torch.isnan(values)
    if not finite.any():
        return torch.tensor(float("nan"), device=values.device)
    return values[finite].mean()


# ----------------------------------------------------------------------------------------- run
def resolve_image_size(config: PretrainConfig) -> tuple[int, int]:
    """The data size: ``data.image_size``, else the model's (they must agree when both are set)."""
    model_size = build_model_config(config.model).encoder.image_size
    if config.data.image_size is None:
        return tuple(model_size)
    data_size = tuple(config.data.image_size)
    if "image_size" in config.model.overrides and tuple(config.model.overrides["image_size"]) != data_size:
        raise ConfigError("data.image_size", f"{data_size} differs from model.overrides.image_size {tuple(config.model.overrides['image_size'])}")
    return data_size


def run_pretraining(config: PretrainConfig, *, resume: bool | str | Path = False) -> TrainResult:
    """Build model, data and task from ``config`` and train; returns the loop's result.

    Outputs in ``config.train.output_dir``: ``config.yaml`` (resolved), ``checkpoints/``,
    ``metrics.jsonl``, ``tensorboard/``, ``figures/reconstruction_step_*.png`` and ``encoder/``.
    """
    from cxrfm.utils import seed_everything

    image_size = resolve_image_size(config)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    seed_everything(config.train.seed)
    model = build_model(config.model, image_size)
    dataset = build_pretrain_dataset(config.data, image_size)
    task = MAEPretrainTask(config)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("MAE %s: %.1fM parameters at %s, %d patches, masker %r, region %s", config.model.preset, parameters / 1e6, image_size, model.num_patches, task.masker, task.region_provider)
    return Trainer(model, task, dataset, config.train, run_config=config).fit(resume=resume)


__all__ = [
    "AugmentSection",
    "CachedDataset",
    "DataSection",
    "DataSource",
    "FigureSection",
    "MAEPretrainTask",
    "MaskingSection",
    "ModelSection",
    "PretrainConfig",
    "build_masker",
    "build_model_config",
    "build_model",
    "build_pretrain_dataset",
    "build_region_provider",
    "run_pretraining",
]

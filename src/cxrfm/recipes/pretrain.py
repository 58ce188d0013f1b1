"""HD-MAE pretraining: the run config and the run (``cxrfm pretrain``); the objective is
:mod:`cxrfm.training.tasks.mae`.

The recipe builds the MAE, the masker, the chest-region provider (segmenter / classical / the
reference rectangle / masks shipped with the data) and the training data from the config, and runs
the one :class:`~cxrfm.training.loop.Trainer`.

Compared with the HD-MAE reference code (see ``shared/notes/reference-implementations.md``): the
region is each image's own segmentation rather than a fixed rectangle (the rectangle remains as
``region: rectangle``); masking is vectorised rather than a per-sample Python loop; the model runs
once per step (the reference ran it twice); the learning-rate schedule is applied; biases and norms
train (only their weight decay is off); the random-resized-crop augmentation is actually used when
enabled. Pixel range: reconstruction targets are the images in cxrfm's one pixel convention,
float32 in ``[0, 1]`` (0 = black), where the reference normalises its inputs to ``[-1, 1]``; with
``norm_pix_loss`` off (the default) the MSE is therefore a quarter of the reference's for the same
reconstruction error, so loss values are not comparable one to one (learning rates are: Adam is
invariant to a constant loss scale).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import ConcatDataset, Dataset, IterableDataset

from cxrfm.anatomy.regions import ChestRegionProvider
from cxrfm.anatomy.segmenter import LungSegmenter
from cxrfm.config import from_dict
from cxrfm.data.registry import DatasetSpec, build_dataset
from cxrfm.errors import ConfigError
from cxrfm.models.mae import MaskedAutoencoder, mae_config
from cxrfm.training.augment import AugmentSection
from cxrfm.training.contract import TrainConfig, TrainResult, check_run_settings
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.mae import FigureSection, MAEPretrainTask, MaskingSection

log = logging.getLogger(__name__)


@dataclass
class ModelSection:
    """``preset``: a key of ``cxrfm.models.MAE_PRESETS``; ``overrides``: MAE or encoder fields
    (e.g. ``{image_size: [256, 256], depth: 4}``)."""

    preset: str = "mae-tiny-cpu"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Named sources (each a :class:`~cxrfm.data.registry.DatasetSpec`), concatenated when there are
    several (a "mixed" run)::

        sources:
          openist: {root: ../shared/data/lung_seg_openist}
          covid: {root: ../shared/data/covid_chestxray, options: {mask_source: any}}

    A source's ``kind`` defaults to its name; its ``train`` role is read (``splits: {train: null}``
    reads every split). Names make overrides easy: ``--set data.sources.openist.root=/data/openist``.
    ``image_size`` defaults to the model's.
    """

    sources: dict[str, DatasetSpec] = field(default_factory=lambda: {"phantom": DatasetSpec()})
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # The YAML loader leaves mapping values as plain dicts: build (and check) each source here,
        # its kind defaulting to its name.
        built = {}
        for name, source in self.sources.items():
            if not isinstance(source, DatasetSpec):
                if not isinstance(source, dict):
                    raise ConfigError(f"data.sources.{name}", f"expected a mapping, got {source!r}")
                source = from_dict(DatasetSpec, {"kind": name, **source}, prefix=f"data.sources.{name}")
            built[name] = source
        self.sources = built


@dataclass
class PretrainConfig:
    """The whole pretraining run: ``cxrfm pretrain --config <this as YAML>``."""

    model: ModelSection = field(default_factory=ModelSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    figures: FigureSection = field(default_factory=FigureSection)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model_config(section: ModelSection, image_size: tuple[int, int] | None = None):
    """The :class:`~cxrfm.models.MAEConfig` of ``section`` (at ``image_size`` unless overridden)."""
    overrides = {key: tuple(value) if key in ("image_size", "patch_size") else value for key, value in section.overrides.items()}
    if image_size is not None:
        overrides.setdefault("image_size", tuple(image_size))
    try:
        return mae_config(section.preset, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.overrides", str(exc)) from None


def build_model(section: ModelSection, image_size: tuple[int, int] | None = None) -> nn.Module:
    """The :class:`~cxrfm.models.MaskedAutoencoder` of ``section``."""
    return MaskedAutoencoder(build_model_config(section, image_size))


def build_region_provider(section: MaskingSection):
    """A :class:`~cxrfm.anatomy.regions.ChestRegionProvider` for the configured source."""
    segmenter = None
    if "segmenter" in (section.region, section.region_fallback):
        if not section.segmenter_weights:
            raise ConfigError("masking.segmenter_weights", "region 'segmenter' needs a LungSegmenter folder")
        segmenter = LungSegmenter.from_pretrained(section.segmenter_weights)
        segmenter.eval()
    fallback = section.region_fallback if section.region == "given" else None
    try:
        return ChestRegionProvider(section.region, segmenter, fallback=fallback)
    except ValueError as exc:
        raise ConfigError("masking.region", str(exc)) from None


def build_task(config: PretrainConfig, region_provider=None) -> MAEPretrainTask:
    """The MAE objective of ``config`` (``region_provider`` replaces the configured region source)."""
    provider = region_provider if region_provider is not None else build_region_provider(config.masking)
    return MAEPretrainTask(config.masking, provider, augment=config.augment, figures=config.figures)


def build_pretrain_dataset(section: DataSection, image_size: tuple[int, int]) -> Dataset:
    """All sources' training splits at ``image_size``; one dataset, or their concatenation."""
    if not section.sources:
        raise ConfigError("data.sources", "at least one source is needed")
    datasets = [
        build_dataset(source, "train", image_size, field_name=f"data.sources.{name}") for name, source in section.sources.items()
    ]
    if len(datasets) == 1:
        return datasets[0]
    if any(isinstance(dataset, IterableDataset) for dataset in datasets):
        raise ConfigError("data.sources", "shard streams cannot be mixed with other sources; write them into shards")
    return ConcatDataset(datasets)


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

    check_run_settings(config.train)  # device and output folder, before anything is built
    image_size = resolve_image_size(config)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    seed_everything(config.train.seed)
    model = build_model(config.model, image_size)
    dataset = build_pretrain_dataset(config.data, image_size)
    task = build_task(config)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("MAE %s: %.1fM parameters at %s, %d patches, masker %r, region %s", config.model.preset, parameters / 1e6, image_size, model.num_patches, task.masker, task.region_provider)
    return Trainer(model, task, dataset, config.train, run_config=config).fit(resume=resume)

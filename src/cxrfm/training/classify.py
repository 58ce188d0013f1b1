"""Disease prediction: the classification task for the generic loop, its run config and protocol.

Protocol (``run_classification``):

1. Train / val / test splits of one dataset (``covid``: the shared set's patient-level split;
   ``phantom``: disjoint seed ranges). Labels: ``data.labels`` or every label with a positive in
   the training split.
2. Label efficiency: ``data.label_fraction`` (1 % / 10 % / 100 %) picks a nested, stratified
   subset of the *training* split only (:func:`cxrfm.evaluation.classification.label_efficiency_subsets`,
   deterministic from ``data.subset_seed``); val and test stay whole.
3. Training on the :class:`~cxrfm.training.loop.Trainer` with BCE (optionally VTB's exp(±ratio)
   weights); every ``train.validate_every`` steps the model is scored on VALIDATION and the best
   weights by ``train.select_metric`` (val mean AUROC) are kept. A frozen trunk (linear probe,
   ``model.frozen_blocks``) is run once per image and its tokens are cached (``TrunkTokenDataset``).
4. With those weights: per-label thresholds maximising F1 on validation; then, once, the test
   split is scored with them (AUROC / F1 / accuracy with bootstrap CIs). The test split never
   influences a choice.

Outputs in ``train.output_dir``: ``model/`` (the classifier + ``thresholds.json``), ``metrics.json``
and ``metrics.md`` (val and test tables), ``figures/heatmaps.png``, and the loop's files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from cxrfm.data.sample import CXRSample, collate_samples
from cxrfm.errors import ConfigError, DatasetError
from cxrfm.training.augment import UNIFORMS_PER_SAMPLE, intensity_jitter, random_resized_crop
from cxrfm.training.loop import BaseTask, StepContext, TrainConfig, Trainer, batch_sample_ids, collate_any
from cxrfm.training.pretrain import AugmentSection, CachedDataset
from cxrfm.training.randomness import STREAM_AUGMENT, hashed_uniform

log = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"
SPLITS = ("train", "val", "test")


# -------------------------------------------------------------------------------------- config
@dataclass
class ClassifierSection:
    """The classifier (see :class:`cxrfm.models.classify.ClassifierConfig`) and its encoder.

    ``encoder_weights``: a pretrained encoder folder (``<pretrain run>/encoder``) or MAE folder;
    None = random initialisation of ``encoder_preset`` (+ ``encoder_overrides``). The encoder is
    resized to ``data.image_size`` when that is set (position embeddings resampled).
    ``frozen_blocks``: leading encoder blocks kept frozen (see ``ClassifierConfig.frozen_blocks``).
    """

    kind: Literal["vtb", "linear_probe", "finetune"] = "vtb"
    encoder_preset: str = "vit-tiny-cpu"
    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None
    label_embedding: Literal["text", "learned"] = "text"
    text_model: str = "minilm"
    label_embedding_dim: int = 384
    logit_batchnorm: bool = False
    pool: Literal["mean", "cls"] = "mean"
    layer_decay: float = 1.0
    head_dropout: float = 0.0
    drop_path_rate: float = 0.0
    frozen_blocks: int = 0
    feature_batchnorm: bool | None = None


@dataclass
class ClassifyDataSection:
    """Where the images and labels come from.

    ``kind``: ``phantom`` or a :mod:`cxrfm.data.registry` kind (``covid``, ``chexpert``, ...) with
    ``root``. Phantoms: ``num_samples`` per split, item seeds from disjoint ranges (train 0+,
    val 1,000,000+, test 2,000,000+, shifted by ``seed``). ``options`` go to the dataset (e.g.
    ``{label_set: coarse}`` for covid, ``{finding_probs: {...}}`` for phantoms).
    ``labels``: label names to predict (None: every label with a positive in train).
    ``stratify``: a ``meta`` key whose value stratifies the subsets (e.g. ``label_coarse``);
    None stratifies by label combination. ``test_split: null`` skips testing.
    ``precompute_trunk``: when the model has a frozen trunk (linear probe, ``frozen_blocks`` > 0)
    and augmentation is off, run the trunk once per image and train on its cached tokens (the
    same numbers, many times faster).
    """

    kind: str = "phantom"
    root: str | None = None
    image_size: tuple[int, int] | None = None
    labels: list[str] | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = "test"
    num_samples: dict[str, int] = field(default_factory=lambda: {"train": 256, "val": 96, "test": 96})
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    label_fraction: float = 1.0
    subset_seed: int = 0
    stratify: str | None = None
    ensure_positive: bool = True
    precompute_trunk: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")


@dataclass
class LossSection:
    """``positive_weighting``: VTB's per-label exp(1 - r) / exp(r) weights (r = train positive ratio)."""

    positive_weighting: bool = True


@dataclass
class EvaluationSection:
    """Bootstrap intervals (``bootstrap`` resamples, ``confidence``, ``seed``), whether to score the
    test split at the end, how many test images the heatmap figure shows, and the batch size of
    prediction."""

    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    evaluate_test: bool = True
    heatmap_images: int = 4
    batch_size: int = 32


@dataclass
class ClassifyConfig:
    """The whole run: ``cxrfm classify train --config <this as YAML>``.

    ``train.select_metric`` defaults to ``mean_auroc`` (validation), ``train.validate_every`` to
    about ten validations per run.
    """

    model: ClassifierSection = field(default_factory=ClassifierSection)
    data: ClassifyDataSection = field(default_factory=ClassifyDataSection)
    loss: LossSection = field(default_factory=LossSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------- data
class LabelSelectedDataset(Dataset):
    """Re-expresses each sample's labels over ``label_names`` (by name; absent names -> NaN)."""

    def __init__(self, dataset: Dataset, source_names: tuple[str, ...], label_names: tuple[str, ...]):
        self.dataset = dataset
        position = {name: i for i, name in enumerate(source_names)}
        self.index = [position.get(name, -1) for name in label_names]
        self.label_names = tuple(label_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> CXRSample:
        sample = self.dataset[index]
        labels = torch.full((len(self.index),), float("nan"))
        if sample.labels is not None:
            for target, source in enumerate(self.index):
                if source >= 0:
                    labels[target] = sample.labels[source]
        return dataclasses.replace(sample, labels=labels)


class TrunkTokenDataset(Dataset):
    """Cached trunk outputs: items ``{"trunk_tokens": (T, D), "labels": (K,)}``."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        self.tokens = tokens
        self.labels = labels

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"trunk_tokens": self.tokens[index], "labels": self.labels[index]}


@torch.no_grad()
def compute_trunk_tokens(model: nn.Module, dataset: Dataset, batch_size: int = 32, device: torch.device | str = "cpu") -> TrunkTokenDataset:
    """Run ``model``'s frozen trunk once over ``dataset`` (images -> ``(N, T, D)`` tokens)."""
    was_training = model.training
    model.eval()
    tokens, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples):
        tokens.append(model.trunk_tokens(batch.images.to(device)).float().cpu())
        labels.append(batch.labels.float())
    model.train(was_training)
    return TrunkTokenDataset(torch.cat(tokens), torch.cat(labels))


def build_split(section: ClassifyDataSection, split: str, image_size: tuple[int, int]) -> Dataset:
    """One split of the configured dataset at ``image_size`` (cached when ``section.cache``)."""
    kind = section.kind.strip().lower()
    if kind == "phantom":
        from cxrfm.data.phantom import SPLIT_SEED_OFFSETS, PhantomDataset

        if split not in section.num_samples:
            raise ConfigError("data.num_samples", f"no phantom count for split {split!r}")
        seed = SPLIT_SEED_OFFSETS.get(split, 0) + section.seed
        dataset: Dataset = PhantomDataset(section.num_samples[split], image_size, seed=seed, split=split, **section.options)
    else:
        from cxrfm.data.registry import build_dataset

        if section.root is None:
            raise ConfigError("data.root", f"dataset kind {section.kind!r} needs a root folder")
        root = Path(section.root).expanduser()
        if not root.exists():
            raise ConfigError("data.root", f"{root} does not exist")
        try:
            dataset = build_dataset(kind, root, split=split, image_size=image_size, **section.options)
        except ValueError as exc:
            raise ConfigError("data.kind", str(exc)) from None
    return CachedDataset(dataset) if section.cache else dataset


def _inner(dataset: Dataset) -> Dataset:
    while isinstance(dataset, (CachedDataset, LabelSelectedDataset)):
        dataset = dataset.dataset
    return dataset


def dataset_label_names(dataset: Dataset) -> tuple[str, ...]:
    names = getattr(_inner(dataset), "label_names", None)
    if not names:
        raise DatasetError(type(_inner(dataset)).__name__, "has no label_names: it cannot train a classifier")
    return tuple(names)


def label_matrix(dataset: Dataset, label_names: tuple[str, ...]) -> np.ndarray:
    """``(N, K)`` labels over ``label_names`` without reading pixels where the dataset allows it."""
    inner = _inner(dataset)
    records = getattr(inner, "records", None)
    if records is not None and not getattr(inner, "_align", False):
        rows = [[float((r.labels or {}).get(name, math.nan)) for name in label_names] for r in records]
        return np.array(rows, dtype=np.float64).reshape(len(records), len(label_names))
    source = dataset_label_names(dataset)
    position = {name: i for i, name in enumerate(source)}
    rows = []
    for index in range(len(dataset)):
        labels = dataset[index].labels
        rows.append([float(labels[position[n]]) if labels is not None and n in position else math.nan for n in label_names])
    return np.array(rows, dtype=np.float64).reshape(len(dataset), len(label_names))


def strata_keys(dataset: Dataset, key: str | None, labels: np.ndarray) -> list:
    """A stratum per training image: ``meta[key]`` (from records) or the label combination."""
    if key is None:
        return [tuple(np.flatnonzero(row == 1)) for row in labels]
    records = getattr(_inner(dataset), "records", None)
    if records is None:
        return [dataset[i].meta.get(key) for i in range(len(dataset))]
    return [record.meta.get(key) for record in records]


def choose_labels(section: ClassifyDataSection, dataset: Dataset) -> tuple[str, ...]:
    available = dataset_label_names(dataset)
    if section.labels:
        unknown = [name for name in section.labels if name not in available]
        if unknown:
            raise ConfigError("data.labels", f"{unknown} not among the dataset's labels {list(available)}")
        return tuple(section.labels)
    counts = (label_matrix(dataset, available) == 1).sum(axis=0)
    chosen = tuple(name for name, count in zip(available, counts) if count > 0)
    if not chosen:
        raise DatasetError(section.kind, "no label has a positive in the training split")
    return chosen


@dataclass
class ClassificationData:
    """The resolved data of a run: datasets with labels over ``label_names`` and the subset used."""

    label_names: tuple[str, ...]
    train: Dataset
    val: Dataset
    test: Dataset | None
    subset_indices: np.ndarray
    train_size: int
    positive_ratio: torch.Tensor


def build_classification_data(section: ClassifyDataSection, image_size: tuple[int, int]) -> ClassificationData:
    """Splits, the label choice and the label-efficiency subset of the training split."""
    from cxrfm.evaluation.classification import label_efficiency_subsets

    train = build_split(section, section.train_split, image_size)
    val = build_split(section, section.val_split, image_size)
    test = build_split(section, section.test_split, image_size) if section.test_split else None
    label_names = choose_labels(section, train)
    train_labels = label_matrix(train, label_names)
    fraction = float(section.label_fraction)
    subsets = label_efficiency_subsets(
        train_labels, [fraction], seed=section.subset_seed,
        strata=strata_keys(train, section.stratify, train_labels), ensure_positive=section.ensure_positive,
    )
    indices = subsets[fraction]
    subset_labels = train_labels[indices]
    scored = ((subset_labels == 0) | (subset_labels == 1)).sum(axis=0)
    ratio = (subset_labels == 1).sum(axis=0) / np.maximum(scored, 1)
    source = dataset_label_names(train)
    select = lambda d: LabelSelectedDataset(d, source, label_names)  # noqa: E731
    log.info(
        "labels %s; training on %d of %d images (fraction %g); positives per label %s",
        list(label_names), len(indices), len(train), fraction, (subset_labels == 1).sum(axis=0).tolist(),
    )
    return ClassificationData(
        label_names=label_names,
        train=Subset(select(train), indices.tolist()),
        val=select(val),
        test=None if test is None else select(test),
        subset_indices=indices,
        train_size=len(train),
        positive_ratio=torch.tensor(ratio, dtype=torch.float32),
    )


# ------------------------------------------------------------------------------------ model
def build_encoder(section: ClassifierSection, image_size: tuple[int, int] | None):
    """The ViT encoder: pretrained from ``encoder_weights`` (resized to ``image_size``) or random."""
    from cxrfm.models.vit import VisionTransformer, vit_config

    overrides: dict[str, Any] = {"drop_path_rate": section.drop_path_rate}
    if image_size is not None:
        overrides["image_size"] = tuple(image_size)
    if section.encoder_weights:
        return VisionTransformer.from_pretrained(section.encoder_weights, **overrides)
    preset_overrides = {k: tuple(v) if k in ("image_size", "patch_size") else v for k, v in section.encoder_overrides.items()}
    preset_overrides.update(overrides)
    try:
        return VisionTransformer(vit_config(section.encoder_preset, **preset_overrides))
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.encoder_overrides", str(exc)) from None


def build_classifier_model(section: ClassifierSection, label_names: tuple[str, ...], encoder) -> nn.Module:
    from cxrfm.models.classify import ClassifierConfig, build_classifier

    try:
        config = ClassifierConfig(
            kind=section.kind, label_names=label_names, encoder=encoder.config, label_embedding=section.label_embedding,
            text_model=section.text_model, label_embedding_dim=section.label_embedding_dim,
            logit_batchnorm=section.logit_batchnorm, pool=section.pool, layer_decay=section.layer_decay,
            head_dropout=section.head_dropout, frozen_blocks=section.frozen_blocks,
            feature_batchnorm=section.feature_batchnorm,
        )
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    return build_classifier(config, encoder=encoder)


# -------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 32, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, labels)``, both ``(N, K)`` (labels NaN where a sample has none).

    ``dataset`` yields :class:`CXRSample` (images) or :class:`TrunkTokenDataset` items.
    """
    was_training = model.training
    model.eval()
    probabilities, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_any):
        logits, batch_labels = model_outputs(model, _move(batch, device))
        probabilities.append(torch.sigmoid(logits).float().cpu())
        labels.append(torch.full_like(probabilities[-1], float("nan")) if batch_labels is None else batch_labels.float().cpu())
    model.train(was_training)
    return torch.cat(probabilities).numpy().astype(np.float64), torch.cat(labels).numpy().astype(np.float64)


def _move(batch, device: torch.device | str):
    if isinstance(batch, dict):
        return {key: value.to(device) for key, value in batch.items()}
    return batch.to(device)


def model_outputs(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits (B, K), labels (B, K) or None)`` of an image batch or a cached-token batch."""
    if isinstance(batch, dict):
        return model(trunk_tokens=batch["trunk_tokens"]), batch["labels"]
    return model(batch.images), batch.labels


def _bce_from_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> float:
    valid = (labels == 0) | (labels == 1)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    return float(losses[valid].mean()) if valid.any() else math.nan


# -------------------------------------------------------------------------------------- task
class ClassificationTask(BaseTask):
    """BCE on ``model(images)``; validation = mean AUROC and BCE on the validation split."""

    def __init__(self, config: ClassifyConfig, positive_ratio: torch.Tensor | None, val_dataset: Dataset | None):
        self.config = config
        self.positive_ratio = positive_ratio if config.loss.positive_weighting else None
        self.val_dataset = val_dataset

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        return model.param_groups(config.weight_decay, config.peak_lr())

    def augment(self, images: torch.Tensor, sample_ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        section = self.config.augment
        if not section.random_resized_crop and not section.intensity_jitter:
            return images
        uniforms = hashed_uniform(sample_ids.to(images.device), UNIFORMS_PER_SAMPLE, seed=ctx.seed, epoch=ctx.epoch, stream=STREAM_AUGMENT)
        if section.random_resized_crop:
            images, _ = random_resized_crop(images, uniforms[:, :4], scale=section.crop_scale, ratio=section.crop_ratio)
        if section.intensity_jitter:
            images = intensity_jitter(images, uniforms[:, 4:6], section.intensity_jitter)
        return images

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict[str, Any]:
        from cxrfm.models.classify import weighted_bce

        if isinstance(batch, dict):  # cached trunk tokens (no augmentation by construction)
            logits, labels = model_outputs(model, batch)
        else:
            logits, labels = model(self.augment(batch.images, batch_sample_ids(batch), ctx)), batch.labels
        return {"loss": weighted_bce(logits, labels, self.positive_ratio)}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        from cxrfm.evaluation.classification import auroc_per_label

        if self.val_dataset is None:
            return {}
        device = next(model.parameters()).device
        probabilities, labels = predict_dataset(model, self.val_dataset, self.config.evaluation.batch_size, device)
        aurocs = auroc_per_label(probabilities, labels)
        defined = aurocs[np.isfinite(aurocs)]
        return {"mean_auroc": float(defined.mean()) if len(defined) else math.nan, "loss": _bce_from_probabilities(probabilities, labels)}


# ---------------------------------------------------------------------------------------- run
@dataclass
class ClassifyResult:
    """What :func:`run_classification` returns (``metrics`` as :meth:`MetricSummary.to_dict`)."""

    output_dir: Path
    model_dir: Path
    label_names: tuple[str, ...]
    train_images: int
    best_step: int | None
    thresholds: list[float]
    val_metrics: dict
    test_metrics: dict | None
    heatmap_figure: Path | None
    steps: int


def resolve_image_size(config: ClassifyConfig) -> tuple[int, int] | None:
    return None if config.data.image_size is None else tuple(config.data.image_size)


def _train_config(config: ClassifyConfig, train_images: int) -> TrainConfig:
    train = config.train
    changes: dict[str, Any] = {}
    if train.select_metric is None:
        changes["select_metric"] = "mean_auroc"
    if train.validate_every == 0:
        changes["validate_every"] = max(1, train.max_steps // 10)
    per_step = train.grad_accum_steps
    if train.batch_size > train_images:
        # A 1 % subset can hold fewer images than one batch: use them all in every step.
        changes["batch_size"] = max(per_step, train_images - train_images % per_step)
        log.info("batch size %d > %d training images: using %d", train.batch_size, train_images, changes["batch_size"])
    return dataclasses.replace(train, **changes) if changes else train


def run_classification(config: ClassifyConfig, token_store: dict | None = None) -> ClassifyResult:
    """Train, select on validation, threshold on validation, test once; see the module docstring.

    ``token_store``: a dict kept by the caller to reuse cached trunk tokens across runs that share
    encoder, data and frozen trunk (label-efficiency sweeps); None caches for this run only.
    """
    from cxrfm.models.classify import load_classifier
    from cxrfm.utils import seed_everything

    seed_everything(config.train.seed)
    encoder = build_encoder(config.model, resolve_image_size(config))
    image_size = tuple(encoder.config.image_size)
    data = build_classification_data(config.data, image_size)
    model = build_classifier_model(config.model, data.label_names, encoder)
    inputs = _model_inputs(config, model, data, {} if token_store is None else token_store)
    train_config = _train_config(config, len(inputs.train))
    run_config = dataclasses.replace(config, train=train_config)
    task = ClassificationTask(config, data.positive_ratio, inputs.val)
    log.info(
        "%s classifier: %.2fM parameters (%.2fM trainable) at %s, %d labels%s",
        config.model.kind, sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, image_size, len(data.label_names),
        f", training on cached tokens of {model.num_frozen_blocks} frozen blocks" if inputs.cached else "",
    )
    result = Trainer(model, task, inputs.train, train_config, run_config=run_config).fit()
    best_step = None
    if result.best is not None:
        model = load_classifier(result.best["path"])
        best_step = int(result.best["step"])
        log.info("selected the weights of step %d (val %s %.4f)", best_step, result.best["metric"], result.best["value"])
    return _finish_run(config, model, data, inputs, Path(train_config.output_dir), best_step, result.step)


@dataclass
class ModelInputs:
    """What the model trains and predicts on: the image datasets, or their cached trunk tokens."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    cached: bool


def _model_inputs(config: ClassifyConfig, model: nn.Module, data: ClassificationData, store: dict) -> ModelInputs:
    augmenting = config.augment.random_resized_crop or bool(config.augment.intensity_jitter)
    if not (config.data.precompute_trunk and model.has_frozen_trunk and not augmenting):
        return ModelInputs(data.train, data.val, data.test, cached=False)
    device = _device_of(config.train)
    model.to(device)
    batch_size = config.evaluation.batch_size

    def cached(split: str, dataset: Dataset) -> TrunkTokenDataset:
        key = _token_key(config, model, split)
        if key not in store:
            store[key] = compute_trunk_tokens(model, dataset, batch_size, device)
            log.info("cached trunk tokens of %d %s images: %s", len(dataset), split, tuple(store[key].tokens.shape))
        return store[key]

    full_train = data.train.dataset  # the whole training split; the subset indexes it
    train = Subset(cached("train", full_train), data.subset_indices.tolist())
    test = None if data.test is None else cached("test", data.test)
    return ModelInputs(train, cached("val", data.val), test, cached=True)


def _token_key(config: ClassifyConfig, model: nn.Module, split: str) -> str:
    """Everything the cached trunk tokens of ``split`` depend on."""
    section = config.model
    if section.encoder_weights:
        encoder = str(Path(section.encoder_weights).expanduser().resolve())
    else:  # a random encoder is a function of its architecture and the seed
        encoder = f"random:{section.encoder_preset}:{sorted(section.encoder_overrides.items())}:seed{config.train.seed}"
    data = config.data
    return json.dumps([
        encoder, list(model.config.encoder.image_size), model.num_frozen_blocks, list(model.label_names),
        data.kind, data.root, data.seed, data.num_samples, repr(sorted(data.options.items())), split,
        getattr(data, f"{split}_split"),
    ], default=str)


def _finish_run(
    config: ClassifyConfig, model: nn.Module, data: ClassificationData, inputs: ModelInputs, output_dir: Path, best_step: int | None, steps: int
) -> ClassifyResult:
    from cxrfm.evaluation.classification import best_f1_thresholds, classification_metrics, format_metric_table

    device = _device_of(config.train)
    model.to(device)
    evaluation = config.evaluation
    val_probabilities, val_labels = predict_dataset(model, inputs.val, evaluation.batch_size, device)
    thresholds = best_f1_thresholds(val_probabilities, val_labels)
    extra = {
        "best_step": best_step,
        "label_fraction": config.data.label_fraction,
        "dataset": {"kind": config.data.kind, "options": config.data.options},
    }
    model_dir = save_classifier(model.cpu(), output_dir / "model", thresholds, extra=extra)
    model.to(device)
    bootstrap = dict(num_resamples=evaluation.bootstrap, confidence=evaluation.confidence, seed=evaluation.seed)
    val_summary = classification_metrics(val_probabilities, val_labels, thresholds, data.label_names, **bootstrap)
    tables = [f"## Validation ({len(val_labels)} images; thresholds chosen here)", "", format_metric_table(val_summary), ""]
    test_summary, figure = None, None
    if inputs.test is not None and evaluation.evaluate_test:
        test_probabilities, test_labels = predict_dataset(model, inputs.test, evaluation.batch_size, device)
        test_summary = classification_metrics(test_probabilities, test_labels, thresholds, data.label_names, **bootstrap)
        tables += [f"## Test ({len(test_labels)} images; validation thresholds)", "", format_metric_table(test_summary), ""]
        log.info("test mean AUROC %.4f %s", test_summary.mean["auroc"], test_summary.mean_ci.get("auroc"))
    if evaluation.heatmap_images > 0:
        shown = data.test if data.test is not None else data.val
        figure = write_heatmaps(model, shown, output_dir / "figures" / "heatmaps.png", evaluation.heatmap_images, thresholds, device)
    metrics = {
        "label_names": list(data.label_names),
        "train_images": len(inputs.train),
        "train_split_images": data.train_size,
        "label_fraction": config.data.label_fraction,
        "best_step": best_step,
        "val": val_summary.to_dict(),
        "test": None if test_summary is None else test_summary.to_dict(),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (output_dir / "metrics.md").write_text("\n".join(tables), encoding="utf-8")
    return ClassifyResult(
        output_dir=output_dir, model_dir=model_dir, label_names=data.label_names, train_images=len(inputs.train),
        best_step=best_step, thresholds=thresholds.tolist(), val_metrics=metrics["val"], test_metrics=metrics["test"],
        heatmap_figure=figure, steps=steps,
    )


def _device_of(train: TrainConfig) -> torch.device:
    if train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(train.device)


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
    """The validation thresholds saved beside a classifier, or None when there are none."""
    path = Path(model_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if tuple(record.get("label_names", ())) != tuple(label_names):
        raise ConfigError(str(path), f"thresholds are for {record.get('label_names')}, the model predicts {list(label_names)}")
    return np.asarray(record["thresholds"], dtype=np.float64)


def write_heatmaps(model: nn.Module, dataset: Dataset, path: Path, count: int, thresholds, device) -> Path:
    """``figures/heatmaps.png``: the first ``count`` images with each label's heatmap and probability."""
    from cxrfm.models.classify.explain import label_heatmaps, save_heatmap_figure

    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    batch = collate_samples(samples)
    heatmaps, probabilities = label_heatmaps(model, batch.images.to(device))
    save_heatmap_figure(path, batch.images, heatmaps.cpu(), probabilities.cpu(), model.label_names, batch.labels, thresholds)
    log.info("wrote %s", path)
    return path


# ---------------------------------------------------------------------------------------- demo
def run_classify_demo(run_dir: Path, encoder_dir: Path | None, seed: int = 0, overrides: Sequence[str] = ()) -> dict:
    """The main job's classification stage: VTB on phantom findings (about 30 s on 2 CPU cores).

    Trains with ``configs/classify-tiny-phantom.yaml`` into ``run_dir`` (from ``encoder_dir``, a
    pretrained encoder folder whose image size the config resizes to 128 x 128, or a random
    encoder when None), writes ``metrics.md`` (validation and test AUROC / F1 / accuracy tables
    with bootstrap CIs) and ``figures/heatmaps.png``, and returns a summary. ``overrides`` are
    extra ``--set`` style overrides (tests use them to shrink the run).
    """
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path

    run_dir = Path(run_dir)
    settings = [f"train.output_dir={run_dir}", f"train.seed={seed}", f"data.subset_seed={seed}", "train.progress_bar=false"]
    if encoder_dir is not None:
        settings.append(f"model.encoder_weights={encoder_dir}")
    config = load_config(ClassifyConfig, resolve_config_path("classify-tiny-phantom"), [*settings, *overrides])
    result = run_classification(config)
    test = result.test_metrics or result.val_metrics
    return {
        "encoder": str(encoder_dir) if encoder_dir is not None else "random init",
        "labels": list(result.label_names),
        "train_images": result.train_images,
        "steps": result.steps,
        "best_step": result.best_step,
        "test_mean_auroc": test["mean"]["auroc"]["value"],
        "test_mean_auroc_ci": test["mean"]["auroc"]["ci"],
        "test_auroc": {name: entry["auroc"]["value"] for name, entry in test["labels"].items()},
        "table": str(result.output_dir / "metrics.md"),
        "table_markdown": (result.output_dir / "metrics.md").read_text(encoding="utf-8"),
        "heatmaps": str(result.heatmap_figure) if result.heatmap_figure else None,
        "model": str(result.model_dir),
    }


__all__ = [
    "ClassificationData",
    "ClassificationTask",
    "ClassifierSection",
    "ClassifyConfig",
    "ClassifyDataSection",
    "ClassifyResult",
    "ModelInputs",
    "TrunkTokenDataset",
    "EvaluationSection",
    "LabelSelectedDataset",
    "LossSection",
    "build_classification_data",
    "build_encoder",
    "compute_trunk_tokens",
    "label_matrix",
    "load_thresholds",
    "predict_dataset",
    "run_classification",
    "run_classify_demo",
    "save_classifier",
    "write_heatmaps",
]

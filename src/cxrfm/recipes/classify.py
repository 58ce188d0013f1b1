"""Disease prediction: the classification task for the generic loop, its run config and protocol.

Protocol (``run_classification``):

1. Train / val / test splits of one dataset (``data``, a :class:`~cxrfm.data.registry.DatasetSpec`;
   ``covid``: the shared set's patient-level split; ``phantom``: disjoint seed ranges). Labels:
   ``labels.names`` or every label with a positive in the training split.
2. Label efficiency: ``labels.fraction`` (1 % / 10 % / 100 %) picks a nested, stratified
   subset of the *training* split only (:func:`cxrfm.evaluation.classification.label_efficiency_subsets`,
   deterministic from ``labels.subset_seed``); val and test stay whole.
3. Training on the :class:`~cxrfm.training.loop.Trainer` with the objective of
   :mod:`cxrfm.training.tasks.classification` (BCE, optionally VTB's exp(±ratio) weights); every
   ``train.validate_every`` steps the model is scored on VALIDATION and the best weights by
   ``train.select_metric`` (val mean AUROC) are kept. A frozen trunk (linear probe,
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from cxrfm.data.registry import DatasetSpec, build_dataset, dataset_label_names, label_matrix, unwrap_dataset
from cxrfm.data.sample import CXRSample
from cxrfm.errors import ConfigError, DatasetError
from cxrfm.evaluation.classification import best_f1_thresholds, classification_metrics, format_metric_table, label_efficiency_subsets
from cxrfm.models.classify import ClassifierConfig, build_classifier, load_classifier
from cxrfm.models.vit import build_encoder
from cxrfm.pipelines.classification import ClassificationPipeline, predict_dataset, save_classifier
from cxrfm.training.augment import AugmentSection
from cxrfm.training.contract import TrainConfig, check_run_settings
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.classification import ClassificationTask, TrunkTokenDataset, compute_trunk_tokens
from cxrfm.utils.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)


@dataclass
class ClassifierSection:
    """The classifier (see :class:`cxrfm.models.classify.ClassifierConfig`) and its encoder.

    ``encoder_weights``: a pretrained encoder folder (``<pretrain run>/encoder``) or MAE folder;
    None = random initialisation of ``encoder_preset`` (+ ``encoder_overrides``).
    ``frozen_blocks``: leading encoder blocks kept frozen (see ``ClassifierConfig.frozen_blocks``).
    ``image_size``: the input size (None: the encoder's own; otherwise position embeddings are
    resampled). ``precompute_trunk``: when the model has a frozen trunk (linear probe,
    ``frozen_blocks`` > 0) and augmentation is off, run the trunk once per image and train on its
    cached tokens (the same numbers, many times faster).
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
    image_size: tuple[int, int] | None = None
    precompute_trunk: bool = True


@dataclass
class LabelSection:
    """Which labels to predict and how much of the training split is labelled.

    ``names``: label names to predict (None: every label with a positive in train). ``fraction``:
    the label-efficiency subset of the training split (nested and stratified, from
    ``subset_seed``). ``stratify``: a ``meta`` key whose value stratifies the subsets (e.g.
    ``label_coarse``); None stratifies by label combination. ``ensure_positive``: every label keeps
    at least one positive in the subset.
    """

    names: list[str] | None = None
    fraction: float = 1.0
    subset_seed: int = 0
    stratify: str | None = None
    ensure_positive: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


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
    data: DatasetSpec = field(default_factory=lambda: DatasetSpec(num_samples={"train": 256, "val": 96, "test": 96}, cache=True))
    labels: LabelSection = field(default_factory=LabelSection)
    loss: LossSection = field(default_factory=LossSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    train: TrainConfig = field(default_factory=TrainConfig)



# -------------------------------------------------------------------------------------- data
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


def strata_keys(dataset: Dataset, key: str | None, labels: np.ndarray) -> list:
    """A stratum per training image: ``meta[key]`` (from records) or the label combination."""
    if key is None:
        return [tuple(np.flatnonzero(row == 1)) for row in labels]
    records = getattr(unwrap_dataset(dataset), "records", None)
    if records is None:
        return [dataset[i].meta.get(key) for i in range(len(dataset))]
    return [record.meta.get(key) for record in records]


def choose_labels(section: LabelSection, dataset: Dataset, kind: str) -> tuple[str, ...]:
    available = dataset_label_names(dataset)
    if section.names:
        unknown = [name for name in section.names if name not in available]
        if unknown:
            raise ConfigError("labels.names", f"{unknown} not among the dataset's labels {list(available)}")
        return tuple(section.names)
    counts = (label_matrix(dataset, available) == 1).sum(axis=0)
    chosen = tuple(name for name, count in zip(available, counts) if count > 0)
    if not chosen:
        raise DatasetError(kind, "no label has a positive in the training split")
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


def build_classification_data(spec: DatasetSpec, labels: LabelSection, image_size: tuple[int, int]) -> ClassificationData:
    """Splits, the label choice and the label-efficiency subset of the training split."""
    train = build_dataset(spec, "train", image_size)
    val = build_dataset(spec, "val", image_size)
    test = build_dataset(spec, "test", image_size) if spec.has_split("test") else None
    label_names = choose_labels(labels, train, spec.kind)
    train_labels = label_matrix(train, label_names)
    fraction = float(labels.fraction)
    subsets = label_efficiency_subsets(
        train_labels, [fraction], seed=labels.subset_seed,
        strata=strata_keys(train, labels.stratify, train_labels), ensure_positive=labels.ensure_positive,
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


def build_classifier_model(section: ClassifierSection, label_names: tuple[str, ...], encoder) -> nn.Module:
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
    check_run_settings(config.train)  # device and output folder, before anything is built
    seed_everything(config.train.seed)
    section = config.model
    encoder = build_encoder(
        section.encoder_weights, section.encoder_preset, section.encoder_overrides,
        image_size=section.image_size, drop_path_rate=section.drop_path_rate,
    )
    image_size = tuple(encoder.config.image_size)
    data = build_classification_data(config.data, config.labels, image_size)
    model = build_classifier_model(config.model, data.label_names, encoder)
    inputs = _model_inputs(config, model, data, {} if token_store is None else token_store)
    train_config = _train_config(config, len(inputs.train))
    run_config = dataclasses.replace(config, train=train_config)
    task = ClassificationTask(
        data.positive_ratio if config.loss.positive_weighting else None, inputs.val,
        augment=config.augment, batch_size=config.evaluation.batch_size,
    )
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
    if not (config.model.precompute_trunk and model.has_frozen_trunk and not config.augment.enabled):
        return ModelInputs(data.train, data.val, data.test, cached=False)
    device = resolve_device(config.train.device)
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
        data.split_name(split), data.max_samples,
    ], default=str)


def _finish_run(
    config: ClassifyConfig, model: nn.Module, data: ClassificationData, inputs: ModelInputs, output_dir: Path, best_step: int | None, steps: int
) -> ClassifyResult:
    device = resolve_device(config.train.device)
    model.to(device)
    evaluation = config.evaluation
    val_probabilities, val_labels = predict_dataset(model, inputs.val, evaluation.batch_size, device)
    thresholds = best_f1_thresholds(val_probabilities, val_labels)
    extra = {
        "best_step": best_step,
        "label_fraction": config.labels.fraction,
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
        pipeline = ClassificationPipeline(model, thresholds, device, model_dir)
        figure = pipeline.save_heatmaps(shown, output_dir / "figures" / "heatmaps.png", evaluation.heatmap_images)
    metrics = {
        "label_names": list(data.label_names),
        "train_images": len(inputs.train),
        "train_split_images": data.train_size,
        "label_fraction": config.labels.fraction,
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

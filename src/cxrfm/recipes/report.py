"""Report generation on the toolkit's one training loop: R2Gen on cxrfm ViT features.

One run (``cxrfm report train --config report-iu-xray``):

1. the tokenizer is built from the TRAIN split's reports only and saved (``tokenizer.json``);
2. the model is an R2Gen memory-driven decoder around a ViT -- a cxrfm pretrained encoder folder
   (its position embeddings resampled to ``model.image_size``) or a randomly initialised preset --
   or, with ``model.visual: blank``, around one constant visual token (an image-blind "language
   prior" model);
3. the :class:`~cxrfm.training.loop.Trainer` trains it (objective:
   :mod:`cxrfm.training.tasks.report`) with two learning rates (``encoder_lr`` for
   the ViT, ``train.lr`` for everything else; R2Gen: 5e-5 / 1e-4, Adam with AMSGrad, weight decay
   5e-5) and validates on the VALIDATION split (teacher-forced loss and perplexity, and BLEU /
   CIDEr of generated reports), keeping the best weights by ``train.select_metric``;
4. the selected weights go to ``<output_dir>/model`` (``config.json``, ``model.safetensors``,
   ``tokenizer.json``, ``generation.json``) and only then is the TEST split read: predictions
   (``predictions_test.jsonl``) and NLG + clinical-efficacy metrics (``metrics_test.json``).

Scoring follows R2Gen: references are the truncated, vocabulary-mapped reports
(``ReportTokenizer.reference_text``), both sides normalised by :func:`cxrfm.text.normalize_report`;
scoring itself is :mod:`cxrfm.evaluation.report` and generation :mod:`cxrfm.pipelines.report_generation`.
Clinical efficacy labels both sides with the offline CheXpert-style rule labeler
(:mod:`cxrfm.evaluation.chexpert_labeler`, not CheXbert) and reports R2Gen's micro/macro and
PromptMRG's example-based conventions (:data:`CE_CONVENTION`).

Differences from R2Gen, on purpose: warm-up + cosine schedule instead of StepLR; gradient clipping
by global norm instead of by value (0.1); no weight decay on biases and norms.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, Dataset

from cxrfm.data.registry import DatasetSpec, build_dataset, label_matrix, unwrap_dataset
from cxrfm.data.sample import CXRSample
from cxrfm.errors import ConfigError, DatasetError
from cxrfm.evaluation.report import PHANTOM_FINDINGS, finding_scores, metrics_table, score_reports
from cxrfm.models.report import ReportGenerator, report_generator_config
from cxrfm.models.report.tokenizer import ReportTokenizer, TokenizerConfig
from cxrfm.models.vit import build_encoder
from cxrfm.pipelines.report_generation import (
    DecodingSection,
    ReportCollator,
    generate_reports,
    load_report_model,
    report_text,
    write_generation_settings,
    write_predictions,
)
from cxrfm.training.contract import TrainConfig, TrainResult, check_run_settings
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.report import MODEL_DIR, ReportGenerationTask, teacher_forced_loss
from cxrfm.utils.runtime import seed_everything

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class ReportModelSection:
    """The generator and its visual side.

    ``preset``: a key of ``cxrfm.models.report.REPORT_PRESETS``; ``overrides``: its fields
    (``d_model``, ``num_decoder_layers``, ...). ``visual``: ``vit`` (images through a ViT) or
    ``blank`` (one all-zero feature token of width ``feature_dim``: the decoder learns the language
    alone). ``encoder_dir``: a cxrfm ViT or MAE folder; None initialises ``encoder_preset``
    (``cxrfm.models.VIT_PRESETS``) + ``encoder_overrides`` at random. ``image_size``: the input size
    (None: the encoder's own; otherwise position embeddings are resampled). ``views_per_study``:
    views per study, each through the ViT, tokens concatenated (R2Gen: 2 for IU-Xray).
    ``freeze_encoder``: keep the ViT fixed. ``visual_norm``: ``batch`` standardises each visual
    token position and channel over the training images before the decoder sees them (see
    :class:`~cxrfm.models.report.ReportGeneratorConfig`; without it the decoder ignores the image);
    ``none`` is R2Gen as published.
    """

    preset: str = "r2gen-tiny-cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    visual: Literal["vit", "blank"] = "vit"
    encoder_dir: str | None = None
    encoder_preset: str = "vit-tiny-cpu"
    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    views_per_study: int = 1
    freeze_encoder: bool = False
    visual_norm: Literal["none", "batch"] = "batch"

    def __post_init__(self) -> None:
        if self.views_per_study < 1:
            raise ValueError(f"views_per_study must be >= 1, got {self.views_per_study}")


@dataclass
class EvaluationSection:
    """Validation and test scoring.

    ``val_metrics``: NLG metrics of generated validation reports (``BLEU-1..4``, ``ROUGE-L``,
    ``CIDEr``; empty = loss and perplexity only), with beam ``val_beam_size`` (None: decoding's).
    ``test``: after training, generate and score the test split with the selected weights.
    ``meteor``: METEOR needs Java. ``clinical``: CE metrics (English only).
    """

    val_metrics: tuple[str, ...] = ("BLEU-4", "CIDEr")
    val_beam_size: int | None = 1
    test: bool = True
    meteor: bool = True
    clinical: bool = True


@dataclass
class ReportTrainConfig:
    """The whole run: ``cxrfm report train --config <this as YAML>``.

    ``data``: image-report pairs (a :class:`~cxrfm.data.registry.DatasetSpec`: ``phantom`` with
    English and Chinese reports, ``iu-xray`` with ``options.image_root`` / ``images_required``, or
    a ``manifest`` with ``split`` and report columns). ``text``: which section is the target
    (R2Gen's IU "report" is the findings); with ``tokenizer.language: zh`` the Chinese version is
    read from ``meta["<text>_zh"]``.

    ``train.lr`` is the decoder's peak rate; ``encoder_lr`` the ViT's (None: the same as the
    decoder's). Set ``train.select_metric`` (``BLEU-4``, ``CIDEr``, ``loss`` with ``select_mode:
    min``, ...) to keep the best weights by validation.
    """

    model: ReportModelSection = field(default_factory=ReportModelSection)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DatasetSpec = field(default_factory=lambda: DatasetSpec(num_samples={"train": 256, "val": 32, "test": 32}, cache=True))
    text: Literal["findings", "impression", "report"] = "findings"
    decoding: DecodingSection = field(default_factory=DecodingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    encoder_lr: float | None = 5.0e-5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/report", lr=1.0e-4, select_metric="BLEU-4"))


# -------------------------------------------------------------------------------------- data
def _record_text(record, text: str) -> str | None:
    parts = {"findings": [record.findings], "impression": [record.impression]}.get(text, [record.findings, record.impression])
    joined = " ".join(p.strip() for p in parts if p and p.strip())
    return joined or None


def split_texts(dataset: Dataset, text: str, language: str) -> list[str | None]:
    """Each item's target report, read from the records when they hold it (no image is loaded)."""
    records = getattr(dataset, "records", None)
    if language == "en" and records is not None and not any(r.report_file for r in records):
        return [_record_text(record, text) for record in records]
    return [report_text(dataset[i], text, language) for i in range(len(dataset))]


class ReportSplit(Dataset):
    """The items of ``dataset`` that have a target report, with their texts (known up front)."""

    def __init__(self, dataset: Dataset, text: str, language: str, name: str):
        texts = split_texts(dataset, text, language)
        self.indices = [i for i, value in enumerate(texts) if value is not None]
        self.texts = [texts[i] for i in self.indices]
        self.dataset, self.name = dataset, name
        if not self.indices:
            raise DatasetError(name, f"no item has a {language} '{text}' report")
        if len(self.indices) < len(texts):
            log.info("%s: %d of %d items have no %s report and are left out", name, len(texts) - len(self.indices), len(texts), text)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> CXRSample:
        sample = self.dataset[self.indices[index]]
        sample.meta = {**sample.meta, "target_text": self.texts[index]}
        return sample


def true_findings(split: ReportSplit) -> dict[str, list[float]] | None:
    """``{finding: labels}`` of the studies of ``split`` for the findings of
    :data:`~cxrfm.evaluation.report.PHANTOM_FINDINGS` its dataset labels (None without labels)."""
    names = tuple(getattr(unwrap_dataset(split.dataset), "label_names", None) or ())
    wanted = tuple(name for name in PHANTOM_FINDINGS if name in names)
    if not wanted:
        return None
    # From the adapter's records where it has them: the test images were read once already.
    labels = label_matrix(split.dataset, wanted)[split.indices]  # (studies, findings)
    if np.isnan(labels).all(axis=1).any():  # a study without labels: nothing to score against
        return None
    return {name: labels[:, column].tolist() for column, name in enumerate(wanted)}


def build_report_split(spec: DatasetSpec, split: str, image_size: tuple[int, int], views: int, text: str, language: str) -> ReportSplit:
    """One split of the configured data at ``image_size`` with ``views`` views per study."""
    if spec.kind == "iu-xray":
        spec = dataclasses.replace(spec, options={"views_per_study": views, **spec.options})
    dataset = build_dataset(spec, split, image_size)
    return ReportSplit(dataset, text, language, f"{spec.kind} {split} split")


# ------------------------------------------------------------------------------------- model
def build_report_model(section: ReportModelSection, tokenizer: ReportTokenizer, encoder=None, max_length: int | None = None):
    """A :class:`~cxrfm.models.report.ReportGenerator` for ``tokenizer``'s vocabulary.

    ``encoder``: the ViT from :func:`build_encoder` (its weights are copied in); None with
    ``visual: blank``.
    """
    overrides = dict(section.overrides)
    overrides.update(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    if max_length is not None:
        overrides["max_length"] = max_length
    if encoder is not None:
        overrides.update(feature_dim=None, encoder=encoder.config)
        if section.visual_norm == "batch":
            tokens_per_view = encoder.config.num_prefix_tokens + encoder.config.num_patches
            overrides.update(visual_norm="batch", num_visual_tokens=section.views_per_study * tokens_per_view)
    try:
        config = report_generator_config(section.preset, len(tokenizer), **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.overrides", str(exc)) from None
    model = ReportGenerator(config, tokenizer)
    if encoder is not None:
        model.encoder.load_state_dict(encoder.state_dict())
        model.encoder.requires_grad_(not section.freeze_encoder)
    return model


def write_settings(directory: Path, config: ReportTrainConfig) -> Path:
    """``generation.json`` of a model trained with ``config``."""
    return write_generation_settings(
        directory, views_per_study=config.model.views_per_study, visual=config.model.visual, text=config.text,
        language=config.tokenizer.language, resize_mode=config.data.options.get("resize_mode", "pad"), decoding=config.decoding,
    )


# --------------------------------------------------------------------------------------- run
@dataclass
class ReportRunResult:
    """What :func:`run_report_training` returns."""

    output_dir: Path
    model_dir: Path
    train: TrainResult
    vocab_size: int
    split_sizes: dict[str, int]
    test_scores: dict[str, Any] | None = None
    predictions_path: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


SplitSource = Dataset | Callable[[], Dataset]


def run_report_training(
    config: ReportTrainConfig, *, splits: Mapping[str, SplitSource] | None = None, resume: bool | str | Path = False
) -> ReportRunResult:
    """Tokenizer from the train split, training with validation-based selection, then the test split.

    ``splits`` replaces configured splits (``{"train": dataset, "val": ..., "test": ...}``; a
    value may be a zero-argument callable, called when the split is first needed). Datasets yield
    :class:`CXRSample`. The test split is built and read only after training.
    """
    check_run_settings(config.train)  # device and output folder, before anything is built
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    language = config.tokenizer.language
    seed_everything(config.train.seed)
    section = config.model
    encoder = (
        build_encoder(section.encoder_dir, section.encoder_preset, section.encoder_overrides, image_size=section.image_size)
        if section.visual == "vit" else None
    )
    image_size = _image_size(config.model, encoder)
    get_split = _split_getter(config, splits, image_size, language)
    train_split, val_split = get_split("train"), get_split("val")
    tokenizer = ReportTokenizer.build(train_split.texts, config.tokenizer)
    output_dir = Path(config.train.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes and scores
    if is_main:
        tokenizer.save_pretrained(output_dir)
    max_length = config.decoding.max_length or config.tokenizer.max_length - 1
    model = build_report_model(config.model, tokenizer, encoder, max_length=max_length)
    task = ReportGenerationTask(
        tokenizer, val_split, views_per_study=section.views_per_study, blank=section.visual == "blank",
        encoder_lr=config.encoder_lr, decoding=config.decoding, val_metrics=config.evaluation.val_metrics,
        val_beam_size=config.evaluation.val_beam_size, select_metric=config.train.select_metric,
        on_end=lambda folder: write_settings(folder, config),
    )
    log.info(
        "report generator: %.2fM parameters, vocabulary %d, %d train / %d val studies, %s visual at %s x %d view(s)",
        sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), len(train_split), len(val_split),
        config.model.visual, image_size, config.model.views_per_study,
    )
    seconds["setup"] = time.perf_counter() - started
    started = time.perf_counter()
    result = Trainer(model, task, train_split, config.train, collate_fn=task.collate, run_config=config).fit(resume=resume)
    seconds["train"] = time.perf_counter() - started
    run = ReportRunResult(output_dir, output_dir / MODEL_DIR, result, len(tokenizer), {"train": len(train_split), "val": len(val_split)}, seconds=seconds)
    if config.evaluation.test and is_main:
        started = time.perf_counter()
        _evaluate_test(config, run, get_split("test"))
        seconds["test"] = time.perf_counter() - started
    return run


def _image_size(section: ReportModelSection, encoder) -> tuple[int, int]:
    if encoder is not None:
        return tuple(encoder.config.image_size)
    if section.image_size is None:
        raise ConfigError("model.image_size", "a blank visual has no encoder to take the size from: set model.image_size")
    return tuple(section.image_size)


def _split_getter(config: ReportTrainConfig, given: Mapping[str, SplitSource] | None, image_size, language: str):
    given = dict(given or {})
    unknown = sorted(set(given) - set(SPLITS))
    if unknown:
        raise ConfigError("splits", f"unknown split(s) {unknown}; use {SPLITS}")

    def get(name: str) -> ReportSplit:
        if name not in given:
            return build_report_split(config.data, name, image_size, config.model.views_per_study, config.text, language)
        dataset = given[name]() if callable(given[name]) and not isinstance(given[name], Dataset) else given[name]
        return dataset if isinstance(dataset, ReportSplit) else ReportSplit(dataset, config.text, language, f"{name} split")

    return get


def _evaluate_test(config: ReportTrainConfig, run: ReportRunResult, test_split: ReportSplit) -> None:
    """Generate the test split with the selected weights; write predictions and metrics."""
    model, _ = load_report_model(run.model_dir, config.train.device)
    collate = ReportCollator(model.tokenizer, config.model.views_per_study, with_images=config.model.visual != "blank")
    loader = DataLoader(test_split, batch_size=config.decoding.batch_size, shuffle=False, collate_fn=collate)
    rows = generate_reports(model, loader, model.tokenizer, config.decoding, blank=config.model.visual == "blank", progress=config.train.progress_bar)
    run.predictions_path = write_predictions(rows, run.output_dir / "predictions_test.jsonl")
    scores = score_reports(
        [r["prediction"] for r in rows], [r["reference"] for r in rows],
        language=config.tokenizer.language, meteor=config.evaluation.meteor, clinical=config.evaluation.clinical,
    )
    scores["teacher_forced"] = teacher_forced_loss(model, loader, model.tokenizer.pad_id, blank=config.model.visual == "blank")
    scores["distinct_reports"] = len({row["prediction"] for row in rows})
    if config.model.visual == "vit":
        swapped = teacher_forced_loss(model, loader, model.tokenizer.pad_id, blank=False, swap_images=True)
        own = scores["teacher_forced"]["loss"]
        scores["teacher_forced"]["loss_swapped_images"] = swapped["loss"]
        # > 0: another study's image makes this study's report less likely, i.e. the image is read.
        scores["teacher_forced"]["swapped_gap"] = swapped["loss"] / own - 1 if own > 0 else float("nan")
    truth = true_findings(test_split)
    if truth is not None and config.tokenizer.language == "en":
        scores["findings"] = finding_scores([r["prediction"] for r in rows], truth)
    scores["selected"] = run.train.best
    run.test_scores = scores
    (run.output_dir / "metrics_test.json").write_text(json.dumps(scores, indent=2, default=str) + "\n", encoding="utf-8")
    run.split_sizes["test"] = len(test_split)
    log.info("test split (%d studies):\n%s", len(rows), metrics_table(scores))

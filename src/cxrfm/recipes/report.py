"""Report generation on the toolkit's one training loop: R2Gen on cxrfm ViT features, or UAR.

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

``model.architecture: uar`` builds :class:`~cxrfm.models.report.uar.UARGenerator` instead
(``model.uar`` switches LSU / CRA / TIR; ``stages`` are successive ``Trainer.fit`` calls on the same
model, each with its loss weights {λ_CE, λ_Global, λ_Mask} and TIR mask on or off -- the paper's two
stages are {1, 1, 0} without the mask, then {1, 1, 1} with it). Each stage but the last trains in
``<output_dir>/stage<k>`` and hands its selected weights to the next.

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
from cxrfm.evaluation.alignment import alignment_score
from cxrfm.evaluation.report import PHANTOM_FINDINGS, finding_scores, metrics_table, score_reports
from cxrfm.models.dvae import DiscreteVAE
from cxrfm.models.report import ReportGenerator, UARGenerator, report_generator_config, uar_config
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
from cxrfm.training.tasks.report import MODEL_DIR, ReportGenerationTask, pooled_features, teacher_forced_loss
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
    architecture: Literal["r2gen", "uar"] = "r2gen"
    uar: "UARSection" = field(default_factory=lambda: UARSection())

    def __post_init__(self) -> None:
        if self.views_per_study < 1:
            raise ValueError(f"views_per_study must be >= 1, got {self.views_per_study}")
        if self.architecture not in ("r2gen", "uar"):
            raise ValueError(f"architecture must be 'r2gen' or 'uar', got {self.architecture!r}")


@dataclass
class UARSection:
    """UAR's switches (``model.architecture: uar``; the paper's full model is every switch on).

    ``lsu``: visual tokens from the trained discrete VAE in ``dvae_dir`` (a ``cxrfm dvae train``
    model folder; its image size is the model's); off: the ViT's features (``encoder_dir`` ...), the
    paper's Base. ``cra``: the cross-modal representation aligner. ``tir``: the learnable
    text-to-image mask, scale ``tir_scale`` (``k``). ``margin``: the triplet loss's ``α``.
    ``train_image_size``: training images are read at this size and randomly cropped to the
    model's (the paper: 128 -> 112; validation and test read 112 directly); None: no crop.
    """

    lsu: bool = True
    dvae_dir: str | None = None
    cra: bool = True
    tir: bool = True
    tir_scale: float = 1000.0
    margin: float = 0.2
    train_image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin <= 2):
            raise ValueError(f"margin must be a cosine margin in [0, 2], got {self.margin!r}")


@dataclass
class StageSection:
    """One ``Trainer.fit`` of a staged run: ``max_steps``, loss weights and TIR's mask on or off."""

    max_steps: int = 100
    ce: float = 1.0
    alignment: float = 0.0
    mask: float = 0.0
    refine: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        for name in ("ce", "alignment", "mask"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"{name} must be a loss weight >= 0, got {value!r}")


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
    stages: list[StageSection] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_stages(self)


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


def build_uar_model(section: ReportModelSection, tokenizer: ReportTokenizer, encoder=None, max_length: int | None = None):
    """A :class:`~cxrfm.models.report.uar.UARGenerator` with ``section.uar``'s switches.

    LSU: around the discrete VAE of ``uar.dvae_dir`` (frozen); otherwise around ``encoder`` (the
    ViT from :func:`build_encoder`, standardised per ``visual_norm`` as for R2Gen).
    """
    uar = section.uar
    overrides = dict(section.overrides)
    overrides.update(cra=uar.cra, tir=uar.tir, tir_scale=uar.tir_scale)
    if max_length is not None:
        overrides["max_length"] = max_length
    try:
        if uar.lsu:
            return UARGenerator.with_image_tokenizer(load_dvae(uar.dvae_dir), tokenizer, section.views_per_study, section.preset, **overrides)
        tokens_per_view = encoder.config.num_prefix_tokens + encoder.config.num_patches
        config = uar_config(
            section.preset, len(tokenizer), section.views_per_study * tokens_per_view, visual="features",
            encoder=encoder.config, views_per_study=section.views_per_study, visual_norm=section.visual_norm,
            pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, **overrides,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.overrides", str(exc)) from None
    model = UARGenerator(config, tokenizer)
    model.encoder.load_state_dict(encoder.state_dict())
    model.encoder.requires_grad_(not section.freeze_encoder)
    return model


def load_dvae(directory: str | None) -> DiscreteVAE:
    if directory is None:
        raise ConfigError("model.uar.dvae_dir", "LSU needs a trained image tokenizer: run `cxrfm dvae train` and set its model folder")
    return DiscreteVAE.from_pretrained(directory)


def check_stages(config: ReportTrainConfig) -> None:
    """Stages only for UAR, and consistent with its switches (the saved model keeps TIR on iff ``uar.tir``)."""
    section = config.model
    if section.architecture != "uar":
        if config.stages:
            raise ConfigError("stages", "training stages (loss weights, TIR mask) are UAR's: set model.architecture: uar")
        return
    if section.visual != "vit":
        raise ConfigError("model.visual", "UAR reads images (for a text-only prior, train on blank placeholder images)")
    uar = section.uar
    for index, stage in enumerate(config.stages):
        if (stage.refine or stage.mask > 0) and not uar.tir:
            raise ConfigError(f"stages[{index}]", "refine / mask weight need model.uar.tir: true")
    if config.stages and config.stages[-1].refine != uar.tir:
        raise ConfigError(f"stages[{len(config.stages) - 1}].refine", "the last stage must train the model as it is saved: refine == model.uar.tir")


def run_stages(config: ReportTrainConfig) -> list[StageSection]:
    """The configured stages; none: one stage of ``train.max_steps`` with L_CE only (mask as saved)."""
    if config.stages:
        return list(config.stages)
    return [StageSection(max_steps=config.train.max_steps, refine=config.model.architecture == "uar" and config.model.uar.tir)]


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
    lsu = section.architecture == "uar" and section.uar.lsu
    encoder = (
        build_encoder(section.encoder_dir, section.encoder_preset, section.encoder_overrides, image_size=section.image_size)
        if section.visual == "vit" and not lsu else None
    )
    dvae = load_dvae(section.uar.dvae_dir) if lsu else None
    image_size = _image_size(config.model, encoder, dvae)
    crop = section.uar.train_image_size if section.architecture == "uar" else None
    get_split = _split_getter(config, splits, image_size, language, train_size=crop)
    train_split, val_split = get_split("train"), get_split("val")
    tokenizer = ReportTokenizer.build(train_split.texts, config.tokenizer)
    output_dir = Path(config.train.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes and scores
    if is_main:
        tokenizer.save_pretrained(output_dir)
    max_length = config.decoding.max_length or config.tokenizer.max_length - 1
    if section.architecture == "uar":
        model = build_uar_model(section, tokenizer, encoder, max_length=max_length)
    else:
        model = build_report_model(section, tokenizer, encoder, max_length=max_length)
    log.info(
        "report generator (%s): %.2fM parameters, vocabulary %d, %d train / %d val studies, %s visual at %s x %d view(s)",
        section.architecture, sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), len(train_split),
        len(val_split), "dVAE-token" if lsu else section.visual, image_size, section.views_per_study,
    )
    seconds["setup"] = time.perf_counter() - started
    started = time.perf_counter()
    result = _train_stages(config, model, tokenizer, train_split, val_split, image_size if crop else None, resume)
    seconds["train"] = time.perf_counter() - started
    run = ReportRunResult(output_dir, output_dir / MODEL_DIR, result, len(tokenizer), {"train": len(train_split), "val": len(val_split)}, seconds=seconds)
    if config.evaluation.test and is_main:
        started = time.perf_counter()
        _evaluate_test(config, run, get_split("test"))
        seconds["test"] = time.perf_counter() - started
    return run


def _train_stages(config: ReportTrainConfig, model, tokenizer, train_split, val_split, crop_size, resume) -> TrainResult:
    """One ``Trainer.fit`` per stage on the same model; the last writes ``<output_dir>/model``."""
    stages = run_stages(config)
    output_dir = Path(config.train.output_dir)
    section = config.model
    result = None
    for index, stage in enumerate(stages):
        last = index == len(stages) - 1
        folder = output_dir if last else output_dir / f"stage{index + 1}"
        train = dataclasses.replace(
            config.train, max_steps=stage.max_steps, output_dir=str(folder),
            warmup_steps=min(config.train.warmup_steps, stage.max_steps - 1),
        )
        if isinstance(model, UARGenerator):
            model.refine = stage.refine
        task = ReportGenerationTask(
            tokenizer, val_split, views_per_study=section.views_per_study, blank=section.visual == "blank",
            encoder_lr=config.encoder_lr, decoding=config.decoding, val_metrics=config.evaluation.val_metrics,
            val_beam_size=config.evaluation.val_beam_size, select_metric=config.train.select_metric,
            on_end=lambda folder: write_settings(folder, config), loss_weights=(stage.ce, stage.alignment, stage.mask),
            margin=section.uar.margin, crop_size=crop_size,
        )
        if len(stages) > 1:
            log.info("stage %d/%d: %d steps, weights CE %g / Global %g / Mask %g, TIR mask %s", index + 1, len(stages),
                     stage.max_steps, stage.ce, stage.alignment, stage.mask, "on" if stage.refine else "off")
        result = Trainer(model, task, train_split, train, collate_fn=task.collate, run_config=config).fit(resume=resume)
        if not last:  # the next stage starts from this stage's selected weights
            model.load_state_dict(UARGenerator.from_pretrained(folder / MODEL_DIR).state_dict())
    return result


def _image_size(section: ReportModelSection, encoder, dvae=None) -> tuple[int, int]:
    if dvae is not None:
        size = (dvae.config.image_size, dvae.config.image_size)
        if section.image_size is not None and tuple(section.image_size) != size:
            raise ConfigError("model.image_size", f"the image tokenizer reads {size} images; set model.image_size to that or null")
        return size
    if encoder is not None:
        return tuple(encoder.config.image_size)
    if section.image_size is None:
        raise ConfigError("model.image_size", "a blank visual has no encoder to take the size from: set model.image_size")
    return tuple(section.image_size)


def _split_getter(config: ReportTrainConfig, given: Mapping[str, SplitSource] | None, image_size, language: str, train_size=None):
    """``get(split)``; ``train_size``: the train split is read at that size (to be cropped to ``image_size``)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(SPLITS))
    if unknown:
        raise ConfigError("splits", f"unknown split(s) {unknown}; use {SPLITS}")

    def get(name: str) -> ReportSplit:
        if name not in given:
            size = tuple(train_size) if train_size is not None and name == "train" else image_size
            return build_report_split(config.data, name, size, config.model.views_per_study, config.text, language)
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
    if isinstance(model, UARGenerator):
        image_features, report_features = pooled_features(model, loader)
        scores["alignment_score"] = alignment_score(image_features.numpy(), report_features.numpy())
    truth = true_findings(test_split)
    if truth is not None and config.tokenizer.language == "en":
        scores["findings"] = finding_scores([r["prediction"] for r in rows], truth)
    scores["selected"] = run.train.best
    run.test_scores = scores
    (run.output_dir / "metrics_test.json").write_text(json.dumps(scores, indent=2, default=str) + "\n", encoding="utf-8")
    run.split_sizes["test"] = len(test_split)
    log.info("test split (%d studies):\n%s", len(rows), metrics_table(scores))

"""Report generation on the toolkit's one training loop: R2Gen on cxrfm ViT features.

One run (``cxrfm report train --config report-iu-xray``):

1. the tokenizer is built from the TRAIN split's reports only and saved (``tokenizer.json``);
2. the model is an R2Gen memory-driven decoder around a ViT -- a cxrfm pretrained encoder folder
   (its position embeddings resampled to ``model.image_size``) or a randomly initialised preset --
   or, with ``model.visual: blank``, around one constant visual token (an image-blind "language
   prior" model);
3. the :class:`~cxrfm.training.loop.Trainer` trains it with two learning rates (``encoder_lr`` for
   the ViT, ``train.lr`` for everything else; R2Gen: 5e-5 / 1e-4, Adam with AMSGrad, weight decay
   5e-5) and validates on the VALIDATION split (teacher-forced loss and perplexity, and BLEU /
   CIDEr of generated reports), keeping the best weights by ``train.select_metric``;
4. the selected weights go to ``<output_dir>/model`` (``config.json``, ``model.safetensors``,
   ``tokenizer.json``, ``generation.json``) and only then is the TEST split read: predictions
   (``predictions_test.jsonl``) and NLG + clinical-efficacy metrics (``metrics_test.json``).

Scoring follows R2Gen: references are the truncated, vocabulary-mapped reports
(``ReportTokenizer.reference_text``), both sides normalised by :func:`cxrfm.evaluation.nlg.normalize_report`.
Clinical efficacy labels both sides with the offline CheXpert-style rule labeler
(:mod:`cxrfm.evaluation.chexpert_labeler`, not CheXbert) and reports R2Gen's micro/macro and
PromptMRG's example-based conventions (:data:`CE_CONVENTION`).

Differences from R2Gen, on purpose: warm-up + cosine schedule instead of StepLR; gradient clipping
by global norm instead of by value (0.1); no weight decay on biases and norms.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from cxrfm.data.sample import CXRSample
from cxrfm.models.report.tokenizer import ReportTokenizer, TokenizerConfig
from cxrfm.errors import ConfigError, DatasetError
from cxrfm.training.loop import BEST_DIR, BaseTask, StepContext, TrainConfig, Trainer, TrainResult
from cxrfm.training.pretrain import CachedDataset

log = logging.getLogger(__name__)

MODEL_DIR = "model"
GENERATION_FILE = "generation.json"
SPLITS = ("train", "val", "test")
CE_CONVENTION = (
    "clinical efficacy over the 14 CheXpert observations, labels from cxrfm's offline CheXpert-style "
    "rule labeler (not CheXbert) on generated and reference reports; positive -> 1, uncertain / "
    "negative / blank -> 0; *_micro and *_macro as R2Gen (sklearn-style), *_example as PromptMRG "
    "(per-report, positives only)"
)


# ------------------------------------------------------------------------------------ config
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
    ``freeze_encoder``: keep the ViT fixed.
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

    def __post_init__(self) -> None:
        if self.views_per_study < 1:
            raise ValueError(f"views_per_study must be >= 1, got {self.views_per_study}")


@dataclass
class ReportDataSection:
    """Image-report pairs and their splits.

    ``kind``: ``phantom`` (procedural phantoms with English and Chinese reports; ``num_train`` /
    ``num_val`` / ``num_test`` of them from disjoint seed ranges starting at ``seed``), ``iu-xray``
    (``root`` = folder of ``annotation.json``; ``image_root`` = R2Gen ``<id>/0.png`` images;
    ``images_required: false`` uses all-zero placeholders where images are missing) or
    ``manifest`` (``root`` = a CSV/JSONL manifest with ``split`` and report columns).
    ``text``: which section is the target (R2Gen's IU "report" is the findings). With
    ``tokenizer.language: zh`` the Chinese version is read from ``meta["<text>_zh"]``.
    ``max_*_samples``: keep only the first N studies of a split (smoke runs). ``cache``: keep
    loaded samples in memory (phantoms: drawn once). ``options``: passed to the dataset adapter.
    """

    kind: Literal["phantom", "iu-xray", "manifest"] = "phantom"
    root: str | None = None
    image_root: str | None = None
    images_required: bool = True
    text: Literal["findings", "impression", "report"] = "findings"
    num_train: int = 256
    num_val: int = 32
    num_test: int = 32
    seed: int = 0
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    max_test_samples: int | None = None
    cache: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecodingSection:
    """Generation settings (validation uses ``evaluation.val_beam_size``).

    ``max_length``: tokens generated after ``<bos>`` (``<eos>`` included); None = the tokenizer's
    ``max_length - 1``. ``no_repeat_ngram_size: 3`` = trigram blocking.
    """

    beam_size: int = 3
    max_length: int | None = None
    length_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 16


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

    ``train.lr`` is the decoder's peak rate; ``encoder_lr`` the ViT's (None: the same as the
    decoder's). Set ``train.select_metric`` (``BLEU-4``, ``CIDEr``, ``loss`` with ``select_mode:
    min``, ...) to keep the best weights by validation.
    """

    model: ReportModelSection = field(default_factory=ReportModelSection)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: ReportDataSection = field(default_factory=ReportDataSection)
    decoding: DecodingSection = field(default_factory=DecodingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    encoder_lr: float | None = 5.0e-5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/report", lr=1.0e-4, select_metric="BLEU-4"))


# -------------------------------------------------------------------------------------- data
def report_text(sample: CXRSample, text: str, language: str) -> str | None:
    """The target report of ``sample``: ``findings`` / ``impression`` / ``report`` (both joined);
    Chinese from ``meta["<text>_zh"]``."""
    if language == "zh":
        value = sample.meta.get(f"{text}_zh")
    else:
        value = sample.report if text == "report" else getattr(sample, text)
    return value.strip() if isinstance(value, str) and value.strip() else None


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


def build_report_split(section: ReportDataSection, split: str, image_size: tuple[int, int], views: int, language: str) -> ReportSplit:
    """One split of the configured data at ``image_size`` with ``views`` views per study."""
    limit = getattr(section, f"max_{split}_samples")
    dataset = _build_raw_split(section, split, image_size, views)
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit)) if not hasattr(dataset, "records") else _first_records(dataset, limit)
    if section.cache:
        dataset = _CachedWithRecords(dataset)
    return ReportSplit(dataset, section.text, language, f"{section.kind} {split} split")


def _first_records(dataset, limit: int):
    dataset.records = dataset.records[:limit]
    return dataset


class _CachedWithRecords(CachedDataset):
    """:class:`CachedDataset` that still exposes the adapter's ``records`` (texts without pixels)."""

    @property
    def records(self):
        return getattr(self.dataset, "records", None)


def _build_raw_split(section: ReportDataSection, split: str, image_size: tuple[int, int], views: int) -> Dataset:
    if section.kind == "phantom":
        from cxrfm.data.phantom import PhantomDataset

        count = {"train": section.num_train, "val": section.num_val, "test": section.num_test}[split]
        # Disjoint seed ranges per split (the phantom default offsets, shifted by data.seed).
        offsets = {"train": 0, "val": 1_000_000, "test": 2_000_000}
        return PhantomDataset(count, image_size, seed=section.seed + offsets[split], split=split, **section.options)
    if section.root is None:
        raise ConfigError("data.root", f"data kind {section.kind!r} needs a root")
    from cxrfm.data.registry import build_dataset

    options = dict(section.options)
    options.setdefault("images_required", section.images_required)
    if section.kind == "iu-xray":
        options.setdefault("views_per_study", views)
        if section.image_root is not None:
            options.setdefault("image_root", section.image_root)
    return build_dataset(section.kind, Path(section.root).expanduser(), split=split, image_size=image_size, **options)


@dataclass
class ReportBatch:
    """``images (B, V, 1, H, W)`` or None (blank visual), ``tokens (B, L)`` (``<bos>`` ... ``<eos>``,
    right-padded), ``texts`` (the raw targets), ``ids`` (study ids)."""

    images: torch.Tensor | None
    tokens: torch.Tensor
    texts: list[str | None]
    ids: list[str]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device, non_blocking: bool = False) -> "ReportBatch":
        images = None if self.images is None else self.images.to(device, non_blocking=non_blocking)
        return ReportBatch(images, self.tokens.to(device, non_blocking=non_blocking), self.texts, self.ids)


def study_views(sample: CXRSample, views: int) -> torch.Tensor:
    """``(V, 1, H, W)``: the sample's image then ``meta["extra_images"]``; missing views repeat the last."""
    stack = [sample.image, *sample.meta.get("extra_images", [])][:views]
    stack += [stack[-1]] * (views - len(stack))
    return torch.stack(stack)


def sample_id(sample: CXRSample) -> str:
    meta = sample.meta
    for key in ("study_id", "path", "index"):
        if meta.get(key) is not None:
            return str(meta[key])
    return ""


class ReportCollator:
    """CXRSamples -> :class:`ReportBatch` (tokenised in the DataLoader worker)."""

    def __init__(self, tokenizer: ReportTokenizer | None, views: int, with_images: bool = True):
        self.tokenizer, self.views, self.with_images = tokenizer, views, with_images

    def __call__(self, samples: list[CXRSample]) -> ReportBatch:
        texts = [s.meta.get("target_text") for s in samples]
        if self.tokenizer is not None and all(t is not None for t in texts):
            tokens = self.tokenizer.batch_encode(texts)
        else:
            tokens = torch.zeros((len(samples), 0), dtype=torch.long)
        images = torch.stack([study_views(s, self.views) for s in samples]) if self.with_images else None
        return ReportBatch(images, tokens, texts, [sample_id(s) for s in samples])


# ------------------------------------------------------------------------------------- model
def build_encoder(section: ReportModelSection):
    """The ViT of ``section`` (pretrained folder, resampled to ``image_size``, or a random preset)."""
    from cxrfm.models.vit import VisionTransformer, vit_config

    size = None if section.image_size is None else tuple(section.image_size)
    if section.encoder_dir is not None:
        overrides = {} if size is None else {"image_size": size}
        return VisionTransformer.from_pretrained(Path(section.encoder_dir).expanduser(), **overrides)
    overrides = {key: tuple(v) if key in ("image_size", "patch_size") else v for key, v in section.encoder_overrides.items()}
    if size is not None:
        overrides["image_size"] = size
    try:
        config = vit_config(section.encoder_preset, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.encoder_overrides", str(exc)) from None
    return VisionTransformer(config)


def build_report_model(section: ReportModelSection, tokenizer: ReportTokenizer, encoder=None, max_length: int | None = None):
    """A :class:`~cxrfm.models.report.ReportGenerator` for ``tokenizer``'s vocabulary.

    ``encoder``: the ViT from :func:`build_encoder` (its weights are copied in); None with
    ``visual: blank``.
    """
    from cxrfm.models.report import ReportGenerator, report_generator_config

    overrides = dict(section.overrides)
    overrides.update(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    if max_length is not None:
        overrides["max_length"] = max_length
    if encoder is not None:
        overrides.update(feature_dim=None, encoder=encoder.config)
    try:
        config = report_generator_config(section.preset, len(tokenizer), **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.overrides", str(exc)) from None
    model = ReportGenerator(config, tokenizer)
    if encoder is not None:
        model.encoder.load_state_dict(encoder.state_dict())
        model.encoder.requires_grad_(not section.freeze_encoder)
    return model


def visual_inputs(model: nn.Module, batch: ReportBatch, blank: bool) -> dict[str, torch.Tensor]:
    """Keyword inputs of the generator: ``images=`` or, for the blank visual, one zero token."""
    if not blank:
        return {"images": batch.images}
    from cxrfm.training.checkpoint import unwrap_model

    feature_dim = unwrap_model(model).config.feature_dim
    return {"features": torch.zeros((len(batch), 1, feature_dim), device=batch.tokens.device)}


# -------------------------------------------------------------------------------------- task
class ReportGenerationTask(BaseTask):
    """Teacher-forced cross-entropy step, two-rate parameter groups, validation on the val split."""

    def __init__(self, config: ReportTrainConfig, tokenizer: ReportTokenizer, val_split: Dataset | None):
        self.config, self.tokenizer, self.val_split = config, tokenizer, val_split
        self.blank = config.model.visual == "blank"
        self.collate = ReportCollator(tokenizer, config.model.views_per_study, with_images=not self.blank)

    def training_step(self, model: nn.Module, batch: ReportBatch, ctx: StepContext) -> dict[str, Any]:
        from cxrfm.models.report import report_loss

        tokens = batch.tokens
        # Through forward (not model.loss) so DDP sees the call and syncs gradients.
        logits = model(tokens[:, :-1], **visual_inputs(model, batch, self.blank))
        return {"loss": report_loss(logits, tokens[:, 1:], self.tokenizer.pad_id)}

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        decoder_lr = config.peak_lr()
        encoder_lr = decoder_lr if self.config.encoder_lr is None else self.config.encoder_lr
        return model.param_groups(encoder_lr, decoder_lr, config.weight_decay)

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Val loss / perplexity (every token, teacher forced) and NLG of generated val reports."""
        if self.val_split is None:
            return {}
        started = time.perf_counter()
        loader = self._loader(self.val_split)
        results = teacher_forced_loss(model, loader, self.tokenizer.pad_id, self.blank)
        metrics = tuple(self.config.evaluation.val_metrics)
        if metrics:
            from cxrfm.evaluation.nlg import compute_nlg_metrics

            decoding = self.config.decoding
            beam = self.config.evaluation.val_beam_size or decoding.beam_size
            rows = generate_reports(model, loader, self.tokenizer, decoding, beam_size=beam, blank=self.blank)
            predictions = [row["prediction"] for row in rows]
            references = [row["reference"] for row in rows]
            results.update(compute_nlg_metrics(predictions, references, metrics=metrics, language=self.tokenizer.config.language))
        log.info("validation at step %d (%.1f s): %s", step, time.perf_counter() - started, _format(results))
        return results

    def _loader(self, split: Dataset) -> DataLoader:
        return DataLoader(split, batch_size=self.config.decoding.batch_size, shuffle=False, collate_fn=self.collate)

    def on_train_end(self, model: nn.Module, ema_model: nn.Module | None, output_dir: Path) -> None:
        """``<output_dir>/model``: the best validation weights when kept, else the final (EMA) ones."""
        target = Path(output_dir) / MODEL_DIR
        best = Path(output_dir) / BEST_DIR
        if target.exists():
            shutil.rmtree(target)
        if self.config.train.select_metric is not None and (best / "model.safetensors").is_file():
            shutil.copytree(best, target)
            log.info("model: best validation weights (%s)", json.loads((best / "best.json").read_text()))
        else:
            (ema_model if ema_model is not None else model).save_pretrained(target)
        write_generation_settings(target, self.config)


def write_generation_settings(directory: Path, config: ReportTrainConfig) -> Path:
    """``generation.json``: what ``cxrfm report generate`` needs beyond the weights."""
    settings = {
        "views_per_study": config.model.views_per_study,
        "visual": config.model.visual,
        "text": config.data.text,
        "language": config.tokenizer.language,
        "resize_mode": config.data.options.get("resize_mode", "pad"),
        "decoding": asdict(config.decoding),
    }
    path = Path(directory) / GENERATION_FILE
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return path


def read_generation_settings(directory: Path) -> dict[str, Any]:
    path = Path(directory) / GENERATION_FILE
    if not path.is_file():
        return {"views_per_study": 1, "visual": "vit", "resize_mode": "pad", "decoding": asdict(DecodingSection())}
    return json.loads(path.read_text(encoding="utf-8"))


def _format(results: Mapping[str, float]) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in results.items())


# -------------------------------------------------------------------- generation and scoring
@torch.no_grad()
def teacher_forced_loss(
    model: nn.Module, loader: DataLoader, pad_id: int, blank: bool, *, swap_images: bool = False
) -> dict[str, float]:
    """Token-weighted mean cross-entropy over ``loader`` and its perplexity ``exp(loss)``.

    ``swap_images``: each report is scored against the NEXT study's images (rolled by one within
    the batch). A model that reads the images scores worse that way; one that learnt only the
    language prior scores the same.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        if swap_images and batch.images is not None:
            batch.images = batch.images.roll(1, dims=0)
        logits = model(batch.tokens[:, :-1], **visual_inputs(model, batch, blank))
        targets = batch.tokens[:, 1:]
        losses = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id, reduction="sum")
        total += float(losses)
        count += int((targets != pad_id).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@torch.no_grad()
def generate_reports(
    model: nn.Module,
    loader: DataLoader,
    tokenizer: ReportTokenizer,
    decoding: DecodingSection,
    *,
    beam_size: int | None = None,
    blank: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``[{"id", "prediction", "reference"}]`` for every study of ``loader`` (a :class:`ReportCollator` loader).

    ``reference`` is R2Gen's scoring form (truncated, vocabulary-mapped) or None without a target.
    """
    from tqdm.auto import tqdm

    from cxrfm.training.checkpoint import unwrap_model

    core = unwrap_model(model)
    device = next(core.parameters()).device
    max_length = decoding.max_length if decoding.max_length is not None else tokenizer.config.max_length - 1
    rows = []
    for batch in tqdm(loader, desc="generate", disable=not progress, dynamic_ncols=True):
        batch = batch.to(device)
        output = core.generate(
            **visual_inputs(core, batch, blank),
            beam_size=beam_size or decoding.beam_size,
            max_length=max_length,
            length_penalty=decoding.length_penalty,
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
        )
        for row, text in enumerate(batch.texts):
            reference = None if text is None else tokenizer.reference_text(text)
            rows.append({"id": batch.ids[row], "prediction": tokenizer.decode(output.sequences[row]), "reference": reference})
    return rows


def score_reports(
    predictions: Sequence[str], references: Sequence[str], *, language: str = "en", meteor: bool = True, clinical: bool = True
) -> dict[str, Any]:
    """NLG metrics (``nlg``) and, for English, clinical efficacy (``clinical``) with its convention."""
    from cxrfm.evaluation.nlg import NLG_METRICS, compute_nlg_metrics

    names = [m for m in NLG_METRICS if m != "METEOR" or (meteor and language == "en")]
    result: dict[str, Any] = {
        "num_reports": len(predictions),
        "language": language,
        "nlg": compute_nlg_metrics(predictions, references, metrics=names, language=language),
        "nlg_protocol": "pycocoevalcap, R2Gen normalisation, no PTB tokenizer; corpus BLEU with closest reference length",
    }
    if clinical and language == "en":
        from cxrfm.evaluation.clinical import clinical_efficacy_from_reports

        result["clinical"] = clinical_efficacy_from_reports(list(predictions), list(references))
        result["clinical_convention"] = CE_CONVENTION
    elif clinical:
        result["clinical_convention"] = "not computed: the CheXpert-style labeler reads English only"
    return result


def metrics_table(scores: Mapping[str, Any]) -> str:
    """A two-column text table of :func:`score_reports` output (per-label CE left out)."""
    lines = [f"{'metric':<20} value", f"{'-' * 20} ------"]
    lines += [f"{name:<20} {value:.4f}" for name, value in scores["nlg"].items()]
    for name, value in scores.get("clinical", {}).items():
        if isinstance(value, float):
            lines.append(f"{'CE ' + name:<20} {value:.4f}")
    lines.append(f"reports: {scores['num_reports']}")
    for name, value in scores.get("teacher_forced", {}).items():
        lines.append(f"{'TF ' + name:<20} {value:.4f}")
    if "clinical_convention" in scores:
        lines.append(f"CE: {scores['clinical_convention']}")
    return "\n".join(lines)


def write_predictions(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Rows to ``.jsonl`` (one object a line) or ``.csv`` (by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        import csv

        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


class _OptionalTargets(Dataset):
    """Every item of ``dataset``; ``meta["target_text"]`` set where the item has a report."""

    def __init__(self, dataset: Dataset, text: str, language: str):
        self.dataset, self.text, self.language = dataset, text, language

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> CXRSample:
        sample = self.dataset[index]
        sample.meta = {**sample.meta, "target_text": report_text(sample, self.text, self.language)}
        return sample


def load_report_model(model_dir: str | Path, device: str = "auto"):
    """``(ReportGenerator in eval mode on device, generation settings)`` from a trained model folder."""
    from cxrfm.models.report import ReportGenerator

    model = ReportGenerator.from_pretrained(model_dir).eval()
    if model.tokenizer is None:
        raise ConfigError("--model", f"{model_dir} has no tokenizer.json: not a trained report model folder")
    resolved = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    return model.to(resolved), read_generation_settings(Path(model_dir))


def generate_for_input(
    model_dir: str | Path,
    input_path: str | Path,
    *,
    beam_size: int | None = None,
    batch_size: int | None = None,
    split: str | None = None,
    device: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Reports for a folder of images or a manifest (CSV/JSONL; a JSONL ``image`` list = views).

    Rows: ``id``, ``image`` (first view's path), ``prediction`` and, where the manifest has the
    model's target section, ``reference`` (R2Gen form).
    """
    from cxrfm.data.folder import ImageFolderDataset
    from cxrfm.data.manifest import ManifestDataset, resolve_manifest

    model, settings = load_report_model(model_dir, device)
    blank = settings.get("visual") == "blank"
    size = tuple(model.encoder.config.image_size) if model.encoder is not None else (32, 32)
    options = dict(image_size=size, resize_mode=settings.get("resize_mode", "pad"), split=split)
    path = Path(input_path)
    is_manifest = path.is_file() or any((path / name).is_file() for name in ("manifest.csv", "manifest.jsonl"))
    dataset = ManifestDataset(resolve_manifest(path), **options) if is_manifest else ImageFolderDataset(path, **options)
    language = settings.get("language", model.tokenizer.config.language)
    targets = _OptionalTargets(dataset, settings.get("text", "findings"), language)
    decoding = DecodingSection(**settings.get("decoding", {}))
    if batch_size is not None:
        decoding.batch_size = batch_size
    collate = ReportCollator(model.tokenizer, int(settings.get("views_per_study", 1)), with_images=not blank)
    loader = DataLoader(targets, batch_size=decoding.batch_size, shuffle=False, collate_fn=collate)
    rows = generate_reports(model, loader, model.tokenizer, decoding, beam_size=beam_size, blank=blank, progress=progress)
    records = getattr(dataset, "records", [])
    for row, record in zip(rows, records):
        row["image"] = None if record.image is None else str(record.image)
        if row["reference"] is None:
            del row["reference"]
    return rows


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
    from cxrfm.utils import seed_everything

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    language = config.tokenizer.language
    seed_everything(config.train.seed)
    encoder = build_encoder(config.model) if config.model.visual == "vit" else None
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
    task = ReportGenerationTask(config, tokenizer, val_split)
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


def run_report_demo(run_dir: Path, encoder_dir: Path | None, seed: int = 0, language: str = "en") -> dict[str, Any]:
    """The main job's report stage (:func:`cxrfm.training.report_demo.run_report_demo`)."""
    from cxrfm.training.report_demo import run_report_demo as run_demo

    return run_demo(Path(run_dir), encoder_dir, seed=seed, language=language)


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
            return build_report_split(config.data, name, image_size, config.model.views_per_study, language)
        dataset = given[name]() if callable(given[name]) and not isinstance(given[name], Dataset) else given[name]
        return dataset if isinstance(dataset, ReportSplit) else ReportSplit(dataset, config.data.text, language, f"{name} split")

    return get


def _evaluate_test(config: ReportTrainConfig, run: ReportRunResult, test_split: ReportSplit) -> None:
    """Generate the test split with the selected weights; write predictions and metrics."""
    from cxrfm.models.report import ReportGenerator

    model = ReportGenerator.from_pretrained(run.model_dir).eval()
    device = torch.device("cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu")
    model.to(device)
    collate = ReportCollator(model.tokenizer, config.model.views_per_study, with_images=config.model.visual != "blank")
    loader = DataLoader(test_split, batch_size=config.decoding.batch_size, shuffle=False, collate_fn=collate)
    rows = generate_reports(model, loader, model.tokenizer, config.decoding, blank=config.model.visual == "blank", progress=config.train.progress_bar)
    run.predictions_path = write_predictions(rows, run.output_dir / "predictions_test.jsonl")
    scores = score_reports(
        [r["prediction"] for r in rows], [r["reference"] for r in rows],
        language=config.tokenizer.language, meteor=config.evaluation.meteor, clinical=config.evaluation.clinical,
    )
    scores["teacher_forced"] = teacher_forced_loss(model, loader, model.tokenizer.pad_id, blank=config.model.visual == "blank")
    if config.model.visual == "vit":
        swapped = teacher_forced_loss(model, loader, model.tokenizer.pad_id, blank=False, swap_images=True)
        scores["teacher_forced"]["loss_swapped_images"] = swapped["loss"]
    scores["selected"] = run.train.best
    run.test_scores = scores
    (run.output_dir / "metrics_test.json").write_text(json.dumps(scores, indent=2, default=str) + "\n", encoding="utf-8")
    run.split_sizes["test"] = len(test_split)
    log.info("test split (%d studies):\n%s", len(rows), metrics_table(scores))


__all__ = [
    "CE_CONVENTION",
    "DecodingSection",
    "EvaluationSection",
    "ReportBatch",
    "ReportCollator",
    "ReportDataSection",
    "ReportGenerationTask",
    "ReportModelSection",
    "ReportRunResult",
    "ReportSplit",
    "ReportTrainConfig",
    "build_encoder",
    "build_report_model",
    "build_report_split",
    "generate_for_input",
    "generate_reports",
    "load_report_model",
    "metrics_table",
    "read_generation_settings",
    "report_text",
    "run_report_demo",
    "run_report_training",
    "score_reports",
    "teacher_forced_loss",
    "write_predictions",
]

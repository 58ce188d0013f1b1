"""Report generation with a trained generator folder: images -> reports, and the batched loop.

A report model folder is ``config.json`` + ``model.safetensors`` + ``tokenizer.json`` +
``generation.json`` (views per study, visual kind, target section, language, decoding settings).
:class:`ReportGenerationPipeline` serves one batch; :func:`generate_reports` runs a loader of
studies (with a progress bar) and :func:`generate_for_input` a folder or manifest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrfm.data.folder import ImageFolderDataset
from cxrfm.data.manifest import ManifestDataset, resolve_manifest
from cxrfm.data.sample import CXRSample
from cxrfm.config import from_dict
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.report import load_report_generator
from cxrfm.models.pretrained import read_json_object
from cxrfm.models.report.tokenizer import TOKENIZER_NAME, ReportTokenizer
from cxrfm.utils.runtime import resolve_device, unwrap_model

GENERATION_FILE = "generation.json"


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


def visual_inputs(model: nn.Module, batch: ReportBatch, blank: bool) -> dict[str, torch.Tensor]:
    """Keyword inputs of the generator: ``images=`` or, for the blank visual, one zero token."""
    if not blank:
        return {"images": batch.images}
    feature_dim = unwrap_model(model).config.feature_dim
    return {"features": torch.zeros((len(batch), 1, feature_dim), device=batch.tokens.device)}


class ReportGenerationPipeline:
    """A trained report generator with its tokenizer and generation settings.

    ``pipeline(images)`` with ``images (B, V, 1, H, W)`` (V views per study, as trained) or
    ``(B, 1, H, W)`` returns one report per study. Any model with ``generate(images=...)`` that
    returns token ids and a ``tokenizer`` works (R2Gen today, UAR next).
    """

    def __init__(self, model: nn.Module, settings: Mapping[str, Any] | None = None, model_dir: Path | None = None):
        self.model = model.eval()
        self.settings = dict(settings or read_generation_settings(Path(model_dir or ".")))
        self.decoding = DecodingSection(**self.settings.get("decoding", {}))
        self.model_dir = model_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "auto") -> "ReportGenerationPipeline":
        model, settings = load_report_model(model_dir, device)
        return cls(model, settings, Path(model_dir))

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def views_per_study(self) -> int:
        return int(self.settings.get("views_per_study", 1))

    @property
    def image_size(self) -> tuple[int, int]:
        return model_image_size(self.model)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, beam_size: int | None = None, max_length: int | None = None) -> list[str]:
        """Reports for ``images (B, V, 1, H, W)`` or ``(B, 1, H, W)`` in [0, 1]."""
        if images.ndim == 4:
            images = images[:, None]
        if images.shape[1] < self.views_per_study:  # missing views repeat the last, as in training
            images = torch.cat([images, images[:, -1:].expand(-1, self.views_per_study - images.shape[1], -1, -1, -1)], dim=1)
        device = next(self.model.parameters()).device
        blank = self.settings.get("visual") == "blank"
        inputs = {"features": torch.zeros((images.shape[0], 1, self.model.config.feature_dim), device=device)} if blank else {"images": images.to(device)}
        length = max_length or self.decoding.max_length or self.tokenizer.config.max_length - 1
        output = self.model.generate(
            **inputs, beam_size=beam_size or self.decoding.beam_size, max_length=length,
            length_penalty=self.decoding.length_penalty, no_repeat_ngram_size=self.decoding.no_repeat_ngram_size,
        )
        return [self.tokenizer.decode(row) for row in output.sequences]


def model_image_size(model: nn.Module) -> tuple[int, int]:
    """The input size of a generator's visual side ((32, 32) for a blank visual, which reads none)."""
    size = getattr(model, "image_size", None)
    return tuple(size) if size is not None else (32, 32)


def load_report_model(model_dir: str | Path, device: str = "auto"):
    """``(generator (R2Gen or UAR) in eval mode on device, generation settings)`` from a trained model folder."""
    model = load_report_generator(model_dir).eval()
    if model.tokenizer is None:
        raise CheckpointError(model_dir, f"no {TOKENIZER_NAME}: not a trained report model folder")
    settings = read_generation_settings(Path(model_dir))
    return model.to(resolve_device(device)), settings


def write_generation_settings(
    directory: Path, *, views_per_study: int, visual: str, text: str, language: str, resize_mode: str, decoding: DecodingSection
) -> Path:
    """``generation.json``: what ``cxrfm report generate`` needs beyond the weights."""
    settings = {
        "views_per_study": views_per_study,
        "visual": visual,
        "text": text,
        "language": language,
        "resize_mode": resize_mode,
        "decoding": asdict(decoding),
    }
    path = Path(directory) / GENERATION_FILE
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return path


def read_generation_settings(directory: Path) -> dict[str, Any]:
    """``generation.json`` (defaults when there is none); a malformed one is a CheckpointError naming the field."""
    path = Path(directory) / GENERATION_FILE
    if not path.is_file():
        return {"views_per_study": 1, "visual": "vit", "resize_mode": "pad", "decoding": asdict(DecodingSection())}
    settings = read_json_object(path)
    views = settings.get("views_per_study", 1)
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise CheckpointError(path, f"field 'views_per_study' must be an integer >= 1, got {views!r}")
    for key in ("visual", "text", "language", "resize_mode"):
        if key in settings and not isinstance(settings[key], str):
            raise CheckpointError(path, f"field '{key}' must be a string, got {settings[key]!r}")
    try:
        decoding = from_dict(DecodingSection, settings.get("decoding"), source=path, prefix="decoding")
    except ConfigError as exc:
        raise CheckpointError(path, f"field '{exc.field}': {exc.reason}") from None
    limits = {"beam_size": 1, "batch_size": 1, "no_repeat_ngram_size": 0, "max_length": 1}
    for key, low in limits.items():
        value = getattr(decoding, key)
        if value is not None and value < low:
            raise CheckpointError(path, f"field 'decoding.{key}' must be >= {low}, got {value}")
    if not math.isfinite(decoding.length_penalty):
        raise CheckpointError(path, f"field 'decoding.length_penalty' must be a finite number, got {decoding.length_penalty}")
    return {**settings, "decoding": asdict(decoding)}


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


def report_text(sample: CXRSample, text: str, language: str) -> str | None:
    """The target report of ``sample``: ``findings`` / ``impression`` / ``report`` (both joined);
    Chinese from ``meta["<text>_zh"]``."""
    if language == "zh":
        value = sample.meta.get(f"{text}_zh")
    else:
        value = sample.report if text == "report" else getattr(sample, text)
    return value.strip() if isinstance(value, str) and value.strip() else None


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
    model, settings = load_report_model(model_dir, device)
    blank = settings.get("visual") == "blank"
    size = model_image_size(model)
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

"""The training stages of a Diff-CXR run (shared/papers/003, Fig. 2), each into its own folder of the run:

1. ``autoencoder``: the KL autoencoder on every training image, its latent scale set to 1 / std,
   PSNR / SSIM on each dataset's test split;
2. ``filter`` (:mod:`cxrfm.recipes.diff_cxr.noise_filter`): LNFS on the training latents -> ``kept.txt``;
3. ``text``: the information squeeze trained with InfoNCE against an image tower (our CXR-CLIP),
   R@1 / R@5 on the test pairs;
4. ``denoiser``: the U-ViT on (latent, squeezed report) pairs, EMA weights kept, the DDPM schedule
   saved beside them;
5. ``adapter``: DKIM, the base frozen, only the adapter trained on the same pairs plus hints.

A stage whose model folder exists is skipped, so an interrupted run goes on where it stopped
(``force`` retrains); within a stage the Trainer's checkpoints resume.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from cxrfm.data.registry import build_dataset, build_role_datasets, dataset_label_names
from cxrfm.data.sample import collate_images, collate_samples
from cxrfm.errors import ConfigError, DatasetError
from cxrfm.evaluation.retrieval import recall_at_k
from cxrfm.evaluation.tokenizer import reconstruction_scores
from cxrfm.figures.tokenizer import save_reconstructions
from cxrfm.models.diffusion.adapter import ControlledUViT
from cxrfm.models.diffusion.autoencoder import AUTOENCODER_PRESETS, CXRAutoencoder, build_autoencoder
from cxrfm.models.diffusion.text import ImageTower, ReportEncoder, ReportEncoderConfig, ReportImageContrast
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig
from cxrfm.models.vit import build_encoder
from cxrfm.pipelines.report_to_image import disease_hint, run_paths
from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
from cxrfm.training.contract import TrainConfig
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.autoencoder import AutoencoderTask
from cxrfm.training.tasks.contrastive import ContrastiveTask, embed_pairs
from cxrfm.training.tasks.diffusion import DiffusionTask
from cxrfm.utils.files import replace_folder
from cxrfm.utils.runtime import unwrap_model

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    """A split's image-report pairs in memory: ``images (N, 1, S, S)``, reports, ids, labels ``(N, K)``."""

    images: torch.Tensor
    reports: list[str]
    ids: list[str]
    labels: torch.Tensor | None
    label_names: tuple[str, ...]

    def subset(self, keep: list[int]) -> "Pairs":
        labels = None if self.labels is None else self.labels[keep]
        return Pairs(self.images[keep], [self.reports[i] for i in keep], [self.ids[i] for i in keep], labels, self.label_names)


def stage_train_config(config: DiffCXRConfig, train: TrainConfig, stage: str) -> TrainConfig:
    return replace(train, output_dir=str(Path(config.output_dir) / stage), seed=config.seed)


_PAIRS_CACHE: dict[str, Pairs | None] = {}


def load_pairs(config: DiffCXRConfig, role: str) -> Pairs | None:
    """Every ``role`` sample of ``config.data`` with a non-empty ``text_field`` (read once per process:
    every stage of a run reads the same pairs)."""
    key = repr((config.data, config.image_size, config.text_field, role))
    if key not in _PAIRS_CACHE:
        if len(_PAIRS_CACHE) >= 6:  # about one run's three splits, twice
            _PAIRS_CACHE.pop(next(iter(_PAIRS_CACHE)))
        _PAIRS_CACHE[key] = read_pairs(config, role)
    return _PAIRS_CACHE[key]


def read_pairs(config: DiffCXRConfig, role: str) -> Pairs | None:
    size = (config.image_size, config.image_size)
    parts = [build_dataset(spec, role, size, field_name=f"data[{i}]") for i, spec in enumerate(config.data) if spec.has_split(role)]
    if not parts:
        return None
    images, reports, ids, labels, names, seen = [], [], [], [], [], set()
    for part in parts:  # one at a time: datasets may have different label sets
        names.append(_label_names(part))
        for batch in DataLoader(part, batch_size=64, collate_fn=collate_samples):
            for index, text in enumerate(batch_texts(batch, config.text_field)):
                if not text:
                    continue
                images.append(batch.images[index])
                reports.append(text)
                meta = batch.meta[index]
                item = str(meta.get("study_id") or meta.get("path") or f"{role}-{len(ids)}")
                item = item if item not in seen else f"{item}#{len(ids)}"  # ids key the filter's kept list
                seen.add(item)
                ids.append(item)
                labels.append(None if batch.labels is None else batch.labels[index])
    if not images:
        raise ConfigError("data", f"no {role} sample has a {config.text_field!r} text (covid needs options: {{notes_as_findings: true}})")
    # Labels only when every dataset of the split shares one label set (mAUC needs one matrix).
    shared = names[0] if names[0] and all(n == names[0] for n in names) and all(row is not None for row in labels) else None
    return Pairs(torch.stack(images), reports, ids, torch.stack(labels) if shared else None, shared or ())


def _label_names(dataset: Dataset) -> tuple[str, ...]:
    try:
        return tuple(dataset_label_names(dataset))
    except DatasetError:
        return ()


def batch_texts(batch, text_field: str) -> list[str | None]:
    if text_field == "findings":
        return batch.findings
    if text_field == "impression":
        return batch.impressions
    return [" ".join(p.strip() for p in (f, i) if p and p.strip()) or None for f, i in zip(batch.findings, batch.impressions)]


# ----------------------------------------------------------------------------- 1. autoencoder
def run_autoencoder_stage(config: DiffCXRConfig, *, resume: bool = False) -> dict:
    section = config.autoencoder
    specs, field_name = (section.data, "autoencoder.data") if section.data else (config.data, "data")
    size = (config.image_size, config.image_size)
    if section.preset not in AUTOENCODER_PRESETS:
        raise ConfigError("autoencoder.preset", f"unknown preset {section.preset!r} (known: {', '.join(AUTOENCODER_PRESETS)})")
    try:
        model = build_autoencoder(section.preset, config.image_size, **section.overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError("autoencoder.overrides", str(exc)) from None
    train_set = build_role_datasets(specs, "train", size, field_name=field_name)
    if train_set is None:
        raise ConfigError("autoencoder.data", "no dataset has a train split")
    train = stage_train_config(config, section.train, "autoencoder")
    task = AutoencoderTask(build_role_datasets(specs, "val", size, field_name=field_name), batch_size=train.batch_size)
    log.info("autoencoder: %.2fM parameters, %d training images at %d² -> latents %s", _millions(model),
             len(train_set), config.image_size, model.config.latent_shape)
    Trainer(model, task, train_set, train, collate_fn=collate_images, run_config=config).fit(resume=resume)
    model = model.cpu().eval()
    model.config.scaling_factor = latent_scale(model, train_set)
    out = Path(train.output_dir)
    replace_folder(out / "model", model.save_pretrained)
    metrics = score_autoencoder(model, config, specs, section.eval_max_images, out)
    _write_json(out / "metrics_test.json", metrics)
    return metrics


@torch.no_grad()
def latent_scale(model: CXRAutoencoder, dataset: Dataset, max_images: int = 256) -> float:
    """1 / std of the unscaled posterior means of up to ``max_images`` training images (SD's rule)."""
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), max_images)))
    latents = torch.cat([model.posterior(images).mode() for images in DataLoader(subset, batch_size=32, collate_fn=collate_images)])
    return float(1.0 / latents.std().clamp(min=1e-6))


@torch.no_grad()
def score_autoencoder(model: CXRAutoencoder, config: DiffCXRConfig, specs, max_images: int, out: Path) -> dict:
    """PSNR / SSIM per dataset test split, and ``reconstructions.png`` (real images first)."""
    per_dataset, shown = {}, None
    for index, spec in enumerate(specs):
        if not spec.has_split("test"):
            continue
        dataset = build_dataset(spec, "test", (config.image_size,) * 2, field_name=f"data[{index}]")
        subset = torch.utils.data.Subset(dataset, range(min(len(dataset), max_images)))
        originals = torch.cat(list(DataLoader(subset, batch_size=16, collate_fn=collate_images)))
        rebuilt = torch.cat([model.decode(model.encode(chunk)) for chunk in originals.split(16)])
        scores = reconstruction_scores(originals[:, 0].numpy(), rebuilt[:, 0].numpy())
        per_dataset[spec.kind] = {"images": len(originals), **{f"{name}_{stat}": fn(values) for name, values in scores.items()
                                                               for stat, fn in (("mean", statistics.mean), ("sd", statistics.pstdev))}}
        if shown is None or spec.kind != "phantom":
            shown = (originals[:4, 0].numpy(), rebuilt[:4, 0].numpy())
    if not per_dataset:
        raise ConfigError("autoencoder.data", "no dataset has a test split to score the autoencoder on")
    figure = save_reconstructions(*shown, out / "reconstructions.png")
    for name, m in per_dataset.items():
        log.info("autoencoder test %s: PSNR %.2f ± %.2f dB, SSIM %.3f ± %.3f (%d images)", name, m["psnr_mean"], m["psnr_sd"],
                 m["ssim_mean"], m["ssim_sd"], m["images"])
    return {"per_dataset": per_dataset, "scaling_factor": model.config.scaling_factor, "figure": str(figure)}


# ----------------------------------------------------------------------------- shared inputs
def kept_training_pairs(config: DiffCXRConfig) -> Pairs:
    """The train pairs, less what the noise filter removed when the filter stage ran."""
    pairs = load_pairs(config, "train")
    if pairs is None:
        raise ConfigError("data", "no dataset has a train split")
    kept_file = Path(config.output_dir) / "filter" / "kept.txt"
    if not config.filter.enabled or not kept_file.is_file():
        return pairs
    kept = set(kept_file.read_text(encoding="utf-8").split())
    keep = [i for i, item in enumerate(pairs.ids) if item in kept]
    log.info("noise filter: training on %d of %d pairs (%s)", len(keep), len(pairs.ids), kept_file)
    return pairs.subset(keep)


@torch.no_grad()
def encode_latents(autoencoder: CXRAutoencoder, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    return torch.cat([autoencoder.encode(chunk) for chunk in images.split(batch_size)])


def load_autoencoder(config: DiffCXRConfig) -> CXRAutoencoder:
    return CXRAutoencoder.from_pretrained(run_paths(config.output_dir)["autoencoder"]).eval()


# ----------------------------------------------------------------------------- 3. text
def build_report_encoder(config: DiffCXRConfig) -> ReportEncoder:
    return ReportEncoder(ReportEncoderConfig(squeeze=config.text.squeeze, condition_tokens=config.text.condition_tokens))


def run_text_stage(config: DiffCXRConfig, *, resume: bool = False) -> dict:
    section = config.text
    report_encoder = build_report_encoder(config)
    encoder = build_encoder(section.image_encoder_dir, section.image_encoder_preset, section.image_encoder_overrides,
                            image_size=(config.image_size, config.image_size))
    model = ReportImageContrast(report_encoder, ImageTower(encoder, report_encoder.config.width))
    train_pairs = kept_training_pairs(config)
    val_pairs, test_pairs = load_pairs(config, "val"), load_pairs(config, "test")
    train = stage_train_config(config, section.train, "text")
    as_tensors = lambda pairs: None if pairs is None else TensorDataset(pairs.images, report_encoder.report_states(pairs.reports))  # noqa: E731
    task = ContrastiveTask(as_tensors(val_pairs), batch_size=train.batch_size)
    log.info("text stage: squeeze %s, image tower %.2fM parameters, %d training pairs", "on" if section.squeeze else "off",
             _millions(model.image_tower), len(train_pairs.ids))
    Trainer(model, task, as_tensors(train_pairs), train, run_config=config).fit(resume=resume)
    model = model.cpu().eval()
    out = Path(train.output_dir)
    replace_folder(out / "model", model.save_pretrained)
    metrics = {}
    if test_pairs is not None:
        images, texts = embed_pairs(model, as_tensors(test_pairs), 64)
        metrics = {"pairs": len(test_pairs.ids), **recall_at_k((images @ texts.T).numpy())}
        log.info("text stage test retrieval (%d pairs): %s", len(test_pairs.ids), ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "R@" in k))
    _write_json(out / "metrics_test.json", metrics)
    return metrics


def load_report_encoder(config: DiffCXRConfig) -> ReportEncoder:
    return ReportImageContrast.from_pretrained(run_paths(config.output_dir)["text"]).report_encoder.eval()


@torch.no_grad()
def condition_tokens(report_encoder: ReportEncoder, reports: list[str], batch_size: int = 64) -> torch.Tensor:
    """``(N, L, 384)`` denoiser conditions of ``reports`` (the squeezed tokens 1-77)."""
    states = report_encoder.report_states(reports)
    return torch.cat([report_encoder(chunk)[1] for chunk in states.split(batch_size)])


# ----------------------------------------------------------------------------- 4-5. diffusion
def noise_scheduler(config: DiffCXRConfig):
    from diffusers import DDPMScheduler

    section = config.denoiser
    return DDPMScheduler(num_train_timesteps=section.num_train_timesteps, beta_start=section.beta_start, beta_end=section.beta_end,
                         beta_schedule=section.beta_schedule, prediction_type="epsilon", clip_sample=False)


def diffusion_sets(config: DiffCXRConfig, with_hint: bool) -> tuple[TensorDataset, TensorDataset | None]:
    """``(latents, context[, hint])`` tensors of the kept train pairs and of the val pairs."""
    autoencoder, report_encoder = load_autoencoder(config), load_report_encoder(config)

    def tensors(pairs: Pairs | None) -> TensorDataset | None:
        if pairs is None:
            return None
        parts = [encode_latents(autoencoder, pairs.images), condition_tokens(report_encoder, pairs.reports)]
        if with_hint:
            parts.append(condition_tokens(report_encoder, [disease_hint(report) for report in pairs.reports]))
        return TensorDataset(*parts)

    return tensors(kept_training_pairs(config)), tensors(load_pairs(config, "val"))


def build_denoiser(config: DiffCXRConfig, latent_shape: tuple[int, int, int], context_length: int) -> UViT:
    section = config.denoiser
    if section.preset not in UVIT_PRESETS:
        raise ConfigError("denoiser.preset", f"unknown preset {section.preset!r} (known: {', '.join(UVIT_PRESETS)})")
    fields = {**UVIT_PRESETS[section.preset], **section.overrides,
              "latent_size": latent_shape[1], "in_channels": latent_shape[0], "context_length": context_length}
    try:
        return UViT(UViTConfig(**fields))
    except (TypeError, ValueError) as exc:
        raise ConfigError("denoiser.overrides", str(exc)) from None


def run_denoiser_stage(config: DiffCXRConfig, *, resume: bool = False) -> dict:
    train_set, val_set = diffusion_sets(config, with_hint=False)
    latent_shape, context_length = tuple(train_set.tensors[0].shape[1:]), train_set.tensors[1].shape[1]
    model = build_denoiser(config, latent_shape, context_length)
    scheduler = noise_scheduler(config)
    train = stage_train_config(config, config.denoiser.train, "denoiser")
    task = DiffusionTask(scheduler, condition_dropout=config.denoiser.condition_dropout, val_set=val_set, batch_size=train.batch_size)
    log.info("denoiser: U-ViT %.2fM parameters, %d pairs, latents %s, %d condition tokens", _millions(model), len(train_set),
             latent_shape, context_length)
    trainer = Trainer(model, task, train_set, train, run_config=config)
    result = trainer.fit(resume=resume)
    final = averaged_model(trainer, model).cpu().eval()

    def write(folder: Path) -> None:
        final.save_pretrained(folder)
        scheduler.save_config(str(folder))  # scheduler_config.json (the pipeline's SCHEDULER_FILE): the sampler is built from it

    replace_folder(Path(train.output_dir) / "model", write)
    return {"final": result.metrics}


def averaged_model(trainer: Trainer, model: torch.nn.Module) -> torch.nn.Module:
    """The EMA weights when the stage kept them (the sampler uses them), else the trained model."""
    return unwrap_model(trainer.ema_model.module) if trainer.ema_model is not None else model


def run_adapter_stage(config: DiffCXRConfig, *, resume: bool = False) -> dict:
    paths = run_paths(config.output_dir)
    base = UViT.from_pretrained(paths["denoiser"])
    model = ControlledUViT(base)
    train_set, val_set = diffusion_sets(config, with_hint=True)
    train = stage_train_config(config, config.adapter.train, "adapter")
    task = DiffusionTask(noise_scheduler(config), condition_dropout=config.denoiser.condition_dropout, val_set=val_set,
                         batch_size=train.batch_size)
    log.info("adapter (DKIM): %.2fM trainable of %.2fM parameters", sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
             _millions(model))
    trainer = Trainer(model, task, train_set, train, run_config=config)
    result = trainer.fit(resume=resume)
    final = averaged_model(trainer, model).cpu().eval()
    replace_folder(paths["adapter"], final.save_pretrained)
    return {"final": result.metrics}


# ----------------------------------------------------------------------------- helpers
def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, default=_plain) + "\n", encoding="utf-8")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


"""UAR's image tokenizer (LSU): train a discrete VAE on CXRs, then score it on held-out images.

One run (``cxrfm dvae train --config dvae-cxr``):

1. the ``train`` splits of every dataset in ``data`` (real CXRs and/or phantoms), concatenated, read
   at ``train_image_size`` and randomly cropped to ``model.image_size`` (UAR: 128 -> 112);
2. the one :class:`~cxrfm.training.loop.Trainer` fits it (:mod:`cxrfm.training.tasks.dvae`),
   validating on the ``val`` splits by hard-token PSNR; ``<output_dir>/model`` gets the final weights;
3. the ``test`` splits (``eval_max_images`` at most each) are tokenised and decoded:
   ``metrics_test.json`` holds PSNR / SSIM (mean, sd, per dataset) and codebook usage (perplexity,
   used and dead codes); ``reconstructions.png`` shows original | reconstruction | residual.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrfm.data.registry import DatasetSpec, build_dataset, build_role_datasets
from cxrfm.errors import ConfigError
from cxrfm.evaluation.tokenizer import codebook_usage, reconstruction_scores
from cxrfm.figures.tokenizer import save_reconstructions
from cxrfm.models.dvae import DVAE_PRESETS, DiscreteVAE, DiscreteVAEConfig
from cxrfm.training.contract import TrainConfig, check_run_settings
from cxrfm.training.loop import Trainer
from cxrfm.data.sample import collate_images
from cxrfm.training.tasks.dvae import DVAETask
from cxrfm.utils.files import replace_folder
from cxrfm.utils.runtime import seed_everything

log = logging.getLogger(__name__)


@dataclass
class DVAEModelSection:
    """``preset``: a key of ``cxrfm.models.dvae.DVAE_PRESETS``; ``overrides``: its fields
    (``codebook_size``, ``hidden_dim``, ``kl_weight`` ...); ``image_size``: the tokenised size."""

    preset: str = "dvae-tiny-cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    image_size: int = 112


@dataclass
class DVAETrainConfig:
    """The whole run: ``cxrfm dvae train --config <this as YAML>``."""

    model: DVAEModelSection = field(default_factory=DVAEModelSection)
    data: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec(num_samples={"train": 256, "val": 16, "test": 16}, cache=True)])
    train_image_size: int | None = 128
    temperature: tuple[float, float] = (1.0, 1 / 16)
    eval_max_images: int = 64
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/dvae", lr=1e-3, batch_size=32, max_steps=200))

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: list at least one dataset")
        if self.train_image_size is not None and self.train_image_size < self.model.image_size:
            raise ValueError(f"train_image_size {self.train_image_size} must be >= model.image_size {self.model.image_size}")
        start, end = self.temperature
        if not (start > 0 and end > 0):
            raise ValueError(f"temperature must be two positive numbers (start, end), got {self.temperature}")


def build_dvae(section: DVAEModelSection) -> DiscreteVAE:
    if section.preset not in DVAE_PRESETS:
        raise ConfigError("model.preset", f"unknown dVAE preset {section.preset!r} (known: {', '.join(DVAE_PRESETS)})")
    try:
        config = DiscreteVAEConfig(image_size=section.image_size, **{**DVAE_PRESETS[section.preset], **section.overrides})
    except (TypeError, ValueError) as exc:
        raise ConfigError("model.overrides", str(exc)) from None
    return DiscreteVAE(config)


def run_dvae_training(config: DVAETrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train, save ``<output_dir>/model``, score the test splits; returns ``metrics_test.json``'s content."""
    check_run_settings(config.train)
    seed_everything(config.train.seed)
    model = build_dvae(config.model)
    size = config.model.image_size
    train_split = build_role_datasets(config.data, "train", (config.train_image_size or size,) * 2)
    if train_split is None:
        raise ConfigError("data", "no dataset has a train split")
    task = DVAETask(build_role_datasets(config.data, "val", (size, size)), temperature=tuple(config.temperature),
                    crop_size=size if config.train_image_size not in (None, size) else None, batch_size=config.train.batch_size)
    log.info("dVAE: %.2fM parameters, codebook %d, %d training images at %s -> %d", sum(p.numel() for p in model.parameters()) / 1e6,
             model.config.codebook_size, len(train_split), config.train_image_size or size, size)
    Trainer(model, task, train_split, config.train, collate_fn=collate_images, run_config=config).fit(resume=resume)
    output_dir = Path(config.train.output_dir)
    model = model.cpu().eval()
    replace_folder(output_dir / "model", model.save_pretrained)
    metrics = evaluate_tokenizer(model, config, output_dir)
    (output_dir / "metrics_test.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


@torch.no_grad()
def evaluate_tokenizer(model: DiscreteVAE, config: DVAETrainConfig, output_dir: Path) -> dict[str, Any]:
    """PSNR / SSIM of hard-token reconstructions and codebook usage on each dataset's test split."""
    size = config.model.image_size
    per_dataset, all_ids, shown = {}, [], None
    for index, spec in enumerate(config.data):
        if not spec.has_split("test"):
            continue
        dataset = build_dataset(spec, "test", (size, size), field_name=f"data[{index}]")
        count = min(len(dataset), config.eval_max_images)
        originals, reconstructions = [], []
        for images in DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=16, collate_fn=collate_images):
            ids = model.encode_tokens(images)
            all_ids.append(ids.numpy())
            originals.append(images[:, 0].numpy())
            reconstructions.append(model.decode_tokens(ids)[:, 0].numpy())
        originals, reconstructions = np.concatenate(originals), np.concatenate(reconstructions)
        scores = reconstruction_scores(originals, reconstructions)
        per_dataset[f"{spec.kind}"] = {
            "images": count, **{f"{name}_{stat}": fn(values) for name, values in scores.items()
                                for stat, fn in (("mean", statistics.mean), ("sd", statistics.pstdev))},
        }
        if shown is None or spec.kind != "phantom":  # show real images when there are any
            shown = (originals[:4], reconstructions[:4])
    if not per_dataset:
        raise ConfigError("data", "no dataset has a test split to score the tokenizer on")
    usage = codebook_usage(np.concatenate([ids.ravel() for ids in all_ids]), model.config.codebook_size)
    figure = save_reconstructions(*shown, output_dir / "reconstructions.png")
    metrics = {"per_dataset": per_dataset, "codebook": usage, "figure": str(figure), "codebook_size": model.config.codebook_size}
    lines = [f"{name}: PSNR {m['psnr_mean']:.2f} ± {m['psnr_sd']:.2f} dB, SSIM {m['ssim_mean']:.3f} ± {m['ssim_sd']:.3f} ({m['images']} images)"
             for name, m in per_dataset.items()]
    log.info("dVAE test reconstructions:\n%s\ncodebook: perplexity %.1f of %d, %d dead codes", "\n".join(lines),
             usage["perplexity"], model.config.codebook_size, usage["dead_codes"])
    return metrics

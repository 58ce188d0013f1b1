"""The run config of a Diff-CXR run: ``cxrfm diffusion train --config diff-cxr-tiny-phantom``.

One YAML, one run folder ``output_dir`` with one sub-folder per stage (``autoencoder``, ``filter``,
``text``, ``denoiser``, ``adapter``, ``evaluation``). Each stage's ``train`` section is a full
:class:`~cxrfm.training.contract.TrainConfig` whose ``output_dir`` is set to the stage folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxrfm.data.registry import DatasetSpec
from cxrfm.errors import ConfigError
from cxrfm.models.diffusion.autoencoder import AUTOENCODER_PRESETS
from cxrfm.models.diffusion.uvit import UVIT_PRESETS
from cxrfm.models.vit import VIT_PRESETS
from cxrfm.recipes.diff_cxr.noise_filter import NoiseFilterSection
from cxrfm.training.contract import TrainConfig

STAGES = ("autoencoder", "filter", "text", "denoiser", "adapter", "evaluation")
REPORT_FIELDS = ("report", "findings", "impression")


def _train(**fields) -> TrainConfig:
    defaults = dict(output_dir="runs/diff-cxr", save_checkpoints=False, tensorboard=False, weight_decay=0.0, clip_grad=1.0)
    return TrainConfig(**{**defaults, **fields})


@dataclass
class AutoencoderSection:
    """``preset``: a key of ``AUTOENCODER_PRESETS``; ``data``: image-only datasets for this stage
    (e.g. real CXRs without reports); empty = the run's paired ``data``."""

    preset: str = "kl-f8-tiny-cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    data: list[DatasetSpec] = field(default_factory=list)
    eval_max_images: int = 64
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=200, batch_size=16, lr=1e-3, warmup_steps=20))


@dataclass
class TextSection:
    """``squeeze``: the information squeeze (off: the 256 MiniLM token states condition the
    denoiser: the ablation's row without AVA-TLS); ``image_encoder_dir``: a cxrfm ViT/MAE folder for
    the image tower (None: ``image_encoder_preset`` from random init)."""

    squeeze: bool = True
    condition_tokens: int = 77
    image_encoder_dir: str | None = None
    image_encoder_preset: str = "vit-tiny-cpu"
    image_encoder_overrides: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=150, batch_size=32, lr=5e-4, warmup_steps=15))


@dataclass
class DenoiserSection:
    """U-ViT (``preset`` a key of ``UVIT_PRESETS``) and the DDPM training schedule (SD's: scaled
    linear β from 0.00085 to 0.012 over 1,000 steps, ε-prediction)."""

    preset: str = "uvit-tiny-cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    condition_dropout: float = 0.1
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=400, batch_size=32, lr=2e-4, betas=(0.9, 0.9),
                                                              warmup_steps=20, ema_decay=0.999))


@dataclass
class AdapterSection:
    """DKIM: ``enabled`` trains the adapter after the denoiser (only the adapter learns)."""

    enabled: bool = True
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=200, batch_size=32, lr=2e-4, betas=(0.9, 0.9),
                                                              warmup_steps=20, ema_decay=0.999))


@dataclass
class SamplingSection:
    """DPM-Solver++ (``sampler``: ``dpm-solver`` or ``ddim``), classifier-free guidance scale, seed."""

    sampler: str = "dpm-solver"
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    batch_size: int = 16
    seed: int = 0


@dataclass
class EvaluationSection:
    """``classifier_dir``: a cxrfm classifier of the domain (mAUC and controllability; None skips
    them); ``feature_encoder_dir``: the ViT whose pooled features define FD/KID (None: the text
    stage's image tower, a network trained here); ``max_images``: test reports to generate for;
    ``guidance_sweep``: scales for the sweep figure; ``controllability_finding``: a finding phrase
    added to reports that lack it, and the classifier label it should raise."""

    classifier_dir: str | None = None
    feature_encoder_dir: str | None = None
    max_images: int = 64
    guidance_sweep: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 7.0])
    controllability_sentence: str = "Moderate left pleural effusion."
    controllability_label: str = "Pleural Effusion"
    figure_examples: int = 4


@dataclass
class DiffCXRConfig:
    """The whole run. ``data``: the image-report pairs (datasets with reports: phantoms, covid with
    ``options: {notes_as_findings: true}``); ``text_field``: which report text is the prompt;
    ``image_size``: square side of every image (divisible by 8)."""

    output_dir: str = "runs/diff-cxr"
    image_size: int = 64
    text_field: str = "report"
    data: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec(num_samples={"train": 256, "val": 32, "test": 32}, cache=True)])
    autoencoder: AutoencoderSection = field(default_factory=AutoencoderSection)
    filter: NoiseFilterSection = field(default_factory=NoiseFilterSection)
    text: TextSection = field(default_factory=TextSection)
    denoiser: DenoiserSection = field(default_factory=DenoiserSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {self.image_size}")
        if self.text_field not in REPORT_FIELDS:
            raise ValueError(f"text_field must be one of {list(REPORT_FIELDS)}, got {self.text_field!r}")
        if not self.data:
            raise ValueError("data: list at least one dataset of image-report pairs")
        if self.sampling.sampler not in ("dpm-solver", "ddim"):
            raise ValueError(f"sampling.sampler must be 'dpm-solver' or 'ddim', got {self.sampling.sampler!r}")
        if not 0.0 <= self.denoiser.condition_dropout < 1.0:
            raise ValueError(f"denoiser.condition_dropout must be in [0, 1), got {self.denoiser.condition_dropout}")
        # Preset names are checked here, before any stage runs: a typo in denoiser.preset would
        # otherwise surface only after the autoencoder, filter and text stages have trained.
        presets = [("autoencoder.preset", self.autoencoder.preset, AUTOENCODER_PRESETS),
                   ("denoiser.preset", self.denoiser.preset, UVIT_PRESETS)]
        if self.text.image_encoder_dir is None:
            presets.append(("text.image_encoder_preset", self.text.image_encoder_preset, VIT_PRESETS))
        for name, preset, known in presets:
            if preset not in known:
                raise ConfigError(name, f"unknown preset {preset!r} (known: {', '.join(known)})")

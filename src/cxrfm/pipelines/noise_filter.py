"""Scoring latents with a fitted LNFS folder (Diff-CXR's latent noise filtering strategy).

A filter folder (written by :func:`cxrfm.recipes.diff_cxr.noise_filter.run_noise_filter`) holds
``reconstructor/`` and ``discriminator/`` (``save_pretrained`` folders) and ``filter.json``, whose
``parameters`` (:class:`FilterParameters`) say how scores are made:

1. latents are standardised per channel with the training set's ``latent_mean`` / ``latent_std``;
2. ``reconstruction_error``: the reconstructor's mean squared error per item (standardised units);
3. ``discriminator_probability``: sigmoid of the discriminator's logit (noisy = 1);
4. ``combined``: with ``combination = "max"`` (the default), ``max(z(log reconstruction_error),
   z(discriminator_logit))``; with ``"mean"``, ``w * z(log error) + (1 - w) * z(logit)``,
   ``w = reconstruction_weight``. ``z(x) = (x - center) / scale`` is a *robust z-score*: centre =
   the training set's median, scale = 1.4826 x its median absolute deviation (the standard deviation
   for Gaussian data, unmoved by the few noisy items), at least one logit for the discriminator
   (:data:`LOGIT_SCALE_FLOOR`). Logs and logits, not errors and
   probabilities: both are then roughly symmetric and unbounded, and the two are on one scale, so
   a single threshold in "robust standard deviations above the typical item" reads the same for
   any dataset or autoencoder. Z-scores rather than ranks, because they are fixed by four saved
   numbers and score new items exactly as the training items were scored. The maximum rather than
   the mean by default, because the discriminator only learns the kinds of noise that made it
   into the typical noisy set: a kind only the reconstructor notices (a rarer or subtler one)
   would have its evidence halved by a mean. On planted phantoms with pooled-pixel latents
   (benchmarks/lnfs_planted.py, 2 seeds) the mean removed 15 % of the heavy-noise items and the
   maximum 95 %: F1 0.81 -> 0.88, for 0 -> 0.11 % of the clean items removed;
5. ``is_noisy``: ``combined >= threshold`` (the threshold the recipe used to remove items).

``LatentNoiseFilter.from_pretrained(folder).score(latents)`` reproduces the recipe's scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrfm.config import from_dict, to_dict
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.diffusion.noise_filter import LatentDiscriminator, LatentReconstructor
from cxrfm.models.pretrained import read_json_object
from cxrfm.utils.runtime import resolve_device

FILTER_FILE = "filter.json"
RECONSTRUCTOR_DIR = "reconstructor"
DISCRIMINATOR_DIR = "discriminator"
FILTER_FORMAT = "cxrfm-lnfs/1"
ERROR_FLOOR = 1e-12  # added before the log: a latent reconstructed exactly still has a finite score
MAD_TO_SD = 1.4826  # median absolute deviation -> standard deviation, for Gaussian data
# Least scale of the logit's z-score, in logits. A discriminator that separates its training sets
# cleanly pushes every normal-looking item to nearly the same saturated logit (e.g. -6.00 +- 0.05);
# dividing by that spread would turn differences of a few hundredths of a logit, which mean
# nothing, into "many standard deviations". One logit (odds times e) is the least that counts.
LOGIT_SCALE_FLOOR = 1.0
COMBINATIONS = ("max", "mean")


@dataclass
class FilterParameters:
    """What turns latents into scores (module docstring); saved as ``filter.json["parameters"]``.

    ``latent_shape``: ``(C, h, w)`` of the latents the filter was fitted on (others are refused);
    ``latent_mean`` / ``latent_std``: per channel; ``reconstruction_center`` / ``_scale``: robust
    z of ``log(error)``; ``discriminator_center`` / ``_scale``: robust z of the logit;
    ``combination``: ``"max"`` or ``"mean"``; ``reconstruction_weight``: ``w`` of the mean;
    ``threshold``: ``combined >= threshold`` is noisy.
    """

    latent_shape: list[int]
    latent_mean: list[float]
    latent_std: list[float]
    reconstruction_center: float
    reconstruction_scale: float
    discriminator_center: float
    discriminator_scale: float
    reconstruction_weight: float
    threshold: float
    combination: str = "max"

    def __post_init__(self) -> None:
        if len(self.latent_shape) != 3 or any(int(n) < 1 for n in self.latent_shape):
            raise ValueError(f"latent_shape must be three sizes (C, h, w) >= 1, got {self.latent_shape}")
        channels = int(self.latent_shape[0])
        for name in ("latent_mean", "latent_std"):
            values = getattr(self, name)
            if len(values) != channels or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be {channels} finite numbers (one per channel), got {values}")
        if not all(v > 0 for v in self.latent_std):
            raise ValueError(f"latent_std must be > 0, got {self.latent_std}")
        for name in ("reconstruction_center", "discriminator_center", "threshold"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("reconstruction_scale", "discriminator_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0.0 <= self.reconstruction_weight <= 1.0:
            raise ValueError(f"reconstruction_weight must be in [0, 1], got {self.reconstruction_weight}")
        if self.combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, got {self.combination!r}")


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)`` of ``values`` (N,); the standard deviation where the MAD is 0, else 1."""
    values = np.asarray(values, dtype=np.float64)
    center = float(np.median(values))
    scale = MAD_TO_SD * float(np.median(np.abs(values - center)))
    if not scale > 1e-12:
        scale = float(np.std(values))
    return center, scale if scale > 1e-12 else 1.0


def fit_parameters(
    latents: torch.Tensor, errors: np.ndarray, logits: np.ndarray, *, latent_mean: list[float], latent_std: list[float],
    combination: str = "max", reconstruction_weight: float = 0.5, threshold: float = 0.0,
) -> FilterParameters:
    """The combination fitted on a training set's raw scores ``errors`` / ``logits`` (N,)."""
    rec_center, rec_scale = robust_center_scale(np.log(np.asarray(errors, dtype=np.float64) + ERROR_FLOOR))
    dis_center, dis_scale = robust_center_scale(logits)
    dis_scale = max(dis_scale, LOGIT_SCALE_FLOOR)
    return FilterParameters(
        latent_shape=[int(n) for n in latents.shape[1:]], latent_mean=list(latent_mean), latent_std=list(latent_std),
        reconstruction_center=rec_center, reconstruction_scale=rec_scale, discriminator_center=dis_center,
        discriminator_scale=dis_scale, reconstruction_weight=float(reconstruction_weight), threshold=float(threshold),
        combination=combination,
    )


def standardise(latents: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(latents - mean) / std`` per channel, float32."""
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return (latents.float() - mean_t.to(latents.device)) / std_t.to(latents.device)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, *, batch_size: int, device: torch.device,
            desc: str = "score", progress: bool = True) -> np.ndarray:
    """``fn`` over ``latents (N, ...)`` in batches on ``device`` -> ``(N,)`` float64 numpy."""
    outputs = []
    for start in tqdm(range(0, latents.shape[0], batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        outputs.append(fn(latents[start : start + batch_size].to(device)).float().cpu())
    if not outputs:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(outputs).numpy().astype(np.float64)


class LatentNoiseFilter:
    """LNFS's two networks in eval mode with their :class:`FilterParameters`."""

    def __init__(self, reconstructor: LatentReconstructor, discriminator: LatentDiscriminator, parameters: FilterParameters,
                 *, device: str | torch.device = "cpu", batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.reconstructor = reconstructor.eval().to(self.device)
        self.discriminator = discriminator.eval().to(self.device)
        self.parameters = parameters
        self.batch_size = int(batch_size)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 256) -> "LatentNoiseFilter":
        """Load ``reconstructor/``, ``discriminator/`` and ``filter.json`` (bad files: CheckpointError)."""
        directory = Path(directory)
        parameters = read_parameters(directory)
        reconstructor = LatentReconstructor.from_pretrained(directory / RECONSTRUCTOR_DIR)
        discriminator = LatentDiscriminator.from_pretrained(directory / DISCRIMINATOR_DIR)
        channels = parameters.latent_shape[0]
        for name, model in (("reconstructor", reconstructor), ("discriminator", discriminator)):
            if model.config.in_channels != channels:
                raise CheckpointError(directory / name, f"takes {model.config.in_channels} channels, {FILTER_FILE} says {channels}")
        return cls(reconstructor, discriminator, parameters, device=device, batch_size=batch_size)

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write both networks and ``filter.json`` (``extra``: settings and counts recorded beside the parameters)."""
        directory = Path(directory)
        self.reconstructor.save_pretrained(directory / RECONSTRUCTOR_DIR)
        self.discriminator.save_pretrained(directory / DISCRIMINATOR_DIR)
        record = {"format": FILTER_FORMAT, "parameters": to_dict(self.parameters), **(extra or {})}
        (directory / FILTER_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return directory

    @property
    def threshold(self) -> float:
        return self.parameters.threshold

    def check_latents(self, latents: torch.Tensor) -> None:
        expected = tuple(self.parameters.latent_shape)
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be (N, {', '.join(map(str, expected))}) as the filter was fitted on, got {got}")

    def raw_scores(self, latents: torch.Tensor, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``latents (N, C, h, w)`` -> ``(reconstruction_error (N,), discriminator_logit (N,))``, float64."""
        self.check_latents(latents)
        standard = standardise(latents, self.parameters.latent_mean, self.parameters.latent_std)
        errors = batched(self.reconstructor.reconstruction_error, standard, batch_size=self.batch_size, device=self.device,
                         desc="reconstruct", progress=progress)
        logits = batched(self.discriminator, standard, batch_size=self.batch_size, device=self.device, desc="discriminate", progress=progress)
        return errors, logits

    def combine(self, errors: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The combined score (module docstring, step 4) of raw scores ``(N,)``."""
        p = self.parameters
        z_reconstruction = (np.log(np.asarray(errors, dtype=np.float64) + ERROR_FLOOR) - p.reconstruction_center) / p.reconstruction_scale
        z_discriminator = (np.asarray(logits, dtype=np.float64) - p.discriminator_center) / p.discriminator_scale
        if p.combination == "max":
            return np.maximum(z_reconstruction, z_discriminator)
        return p.reconstruction_weight * z_reconstruction + (1.0 - p.reconstruction_weight) * z_discriminator

    def score(self, latents: torch.Tensor, *, progress: bool = True) -> dict[str, np.ndarray]:
        """``latents (N, C, h, w)`` -> ``(N,)`` float64 arrays ``reconstruction_error``,
        ``discriminator_logit``, ``discriminator_probability`` and ``combined`` (higher = noisier)."""
        return self.scores_from_raw(*self.raw_scores(latents, progress=progress))

    def scores_from_raw(self, errors: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score`'s dictionary from :meth:`raw_scores`' two arrays."""
        return {
            "reconstruction_error": errors,
            "discriminator_logit": logits,
            "discriminator_probability": 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500))),
            "combined": self.combine(errors, logits),
        }

    def is_noisy(self, latents: torch.Tensor, *, progress: bool = False) -> np.ndarray:
        """``(N,)`` bool: ``combined >= threshold`` (the saved removal threshold)."""
        return self.score(latents, progress=progress)["combined"] >= self.threshold


def read_parameters(directory: str | Path) -> FilterParameters:
    """``filter.json["parameters"]`` of a filter folder; missing or malformed -> CheckpointError."""
    path = Path(directory) / FILTER_FILE
    if not path.is_file():
        raise CheckpointError(directory, f"no {FILTER_FILE} (is this an LNFS folder written by run_noise_filter?)")
    record = read_json_object(path, "an LNFS filter record")
    if record.get("format") != FILTER_FORMAT:
        raise CheckpointError(path, f"format {record.get('format')!r} is not {FILTER_FORMAT!r}")
    try:
        return from_dict(FilterParameters, record.get("parameters"), source=path, prefix="parameters")
    except ConfigError as exc:
        raise CheckpointError(path, str(exc)) from None

"""Diff-CXR stage 1: LNFS, the latent noise filtering strategy (shared/papers/003 Sec. II-B, Fig. 3).

``run_noise_filter(latents, item_ids, section, output_dir)`` takes every training image's
autoencoder latent ``(N, C, h, w)`` and decides which items to drop, coarse to fine:

0. **standardise** each latent channel by its mean and standard deviation over the N items;
1. **latent clustering**: flatten, K-means with ``num_clusters`` centroids (scikit-learn,
   ``kmeans_n_init`` restarts, seeded), distance of each item to its centroid. In each cluster
   holding at least ``min_cluster_share`` of all items, the ``typical_normal_fraction`` closest
   items are the *typical normal* set. Per cluster rather than one global distance cut (the
   paper's "predefined distance threshold"), so loose clusters of normal images are represented
   too; and small clusters give none, because a set of near-identical bad images (blank frames)
   forms a tight cluster of its own whose items are all close to their centroid;
2. **manifold modelling**: a :class:`~cxrfm.models.diffusion.noise_filter.LatentReconstructor`
   (bottleneck, no skips) trained with MSE on the typical normal set; its reconstruction error
   scores every item, and the ``typical_noisy_fraction`` x N worst-reconstructed items among those
   *outside* the typical normal set are the *typical noisy* set;
3. **explicit supervision**: a :class:`~cxrfm.models.diffusion.noise_filter.LatentDiscriminator`
   trained with BCE on typical normal (0) vs typical noisy (1), noisy items weighted by
   normal / noisy;
4. **combination and removal**: ``combined = max(z(log error), z(logit))`` (``combination:
   max``) or ``w z(log error) + (1 - w) z(logit)`` (``mean``, ``w = reconstruction_weight``), with
   robust z-scores (median, 1.4826 MAD over all N; :mod:`cxrfm.pipelines.noise_filter` says why
   these). Items with ``combined >= threshold`` are removed (default 3.0: three
   robust standard deviations above the typical item), or, with ``remove_fraction``, the top
   that share of items.

The paper gives no thresholds or counts (only that about 2,000 MIMIC-CXR images were removed);
every one is a field below. Its optimiser settings (Adam, lr 3e-5, CosineAnnealingLR, batch 512)
are for hundreds of thousands of latents on A100s; the defaults here (Adam, lr 1e-3, cosine,
batch 64, a few hundred steps) fit a few thousand latents on a CPU in seconds. Set ``lr=3e-5``,
``batch_size=512`` and more steps to follow the paper.

Known limits (benchmarks/lnfs_planted.py): the filter finds what makes a latent unusual, so
noise that the latent hardly shows (a lateral flip of a near-symmetric chest, small burnt-in text
or pixel noise under 8x pooling) is missed; a featureless mid-grey frame can sit close to a blurry
centroid and be reconstructed well, i.e. look *typical*; and on small, mixed real sets the clean
items' score tail is heavier, so a fixed threshold removes more clean items there (prefer
``remove_fraction`` when the noise rate is roughly known).

Written to ``output_dir`` (replaced atomically when it exists): ``reconstructor/``,
``discriminator/`` and ``filter.json`` (the folder :class:`~cxrfm.pipelines.noise_filter.LatentNoiseFilter`
loads; ``filter.json`` also records the settings, counts and threshold), ``scores.csv`` (one row
per item), ``kept.txt`` / ``removed.txt`` (ids, one per line: the kept list is the manifest of the
pruned set), ``removed.png`` when images are given, and ``training/`` (each network's config.yaml
and metrics.jsonl).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from cxrfm.config import to_dict
from cxrfm.errors import ConfigError
from cxrfm.models.diffusion.noise_filter import LatentDiscriminator, LatentDiscriminatorConfig, LatentReconstructor, LatentReconstructorConfig
from cxrfm.pipelines.noise_filter import COMBINATIONS, LatentNoiseFilter, batched, fit_parameters, standardise
from cxrfm.training.contract import TrainConfig
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.latent_filter import LatentDiscriminationTask, LatentReconstructionTask
from cxrfm.utils.files import replace_folder
from cxrfm.utils.runtime import refuse_file_in_path, resolve_device, seed_everything

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 3.0
SECTION = "noise_filter"  # how errors name the section's fields
COMBINATION_TEXT = {
    "max": "max(z(log reconstruction_error), z(discriminator_logit))",
    "mean": "reconstruction_weight * z(log reconstruction_error) + (1 - reconstruction_weight) * z(discriminator_logit)",
}  # z = (x - median) / (1.4826 MAD) over the training items (at least 1 logit for the discriminator)
SCORE_COLUMNS = ("id", "cluster", "distance", "typical", "reconstruction_error", "discriminator_logit",
                 "discriminator_probability", "combined", "removed")


def _in_open_unit(section, name: str) -> None:
    value = getattr(section, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


@dataclass
class NoiseFilterSection:
    """LNFS settings (module docstring for the stages they belong to).

    Attributes:
        enabled: run LNFS as stage 2 of a Diff-CXR run (off: every training pair is kept).
        num_clusters: K-means centroids ``m``. kmeans_n_init: K-means restarts (best inertia kept).
        typical_normal_fraction: share of each (large enough) cluster, closest to its centroid,
            taken as typical normal.
        min_cluster_share: clusters with fewer than this share of all items give no typical
            normal items (must be < 1 / num_clusters, so the largest cluster always qualifies).
        typical_noisy_fraction: typical noisy items, as a share of all items, taken from the
            worst-reconstructed items outside the typical normal set.
        reconstructor_channels, reconstructor_depth, bottleneck_channels: the reconstructor
            (first-stage width, stride-2 stages, bottleneck channels).
        discriminator_channels, discriminator_depth: the discriminator (first width, blocks).
        reconstructor_steps, discriminator_steps: optimiser steps of each network.
        batch_size, lr: Adam with a cosine schedule for both (paper: batch 512, lr 3e-5).
        input_noise: Gaussian jitter (in standardised latent units) on training batches.
        combination: ``max`` (either network's robust z-score) or ``mean`` (their weighted mean).
        reconstruction_weight: ``w`` of the mean (1: reconstruction error only, 0: the
            discriminator only); unused by ``max``.
        threshold: remove items with ``combined >= threshold`` (robust z units).
        remove_fraction: instead, remove this share of items (the highest combined scores).
            Give at most one of the two; neither means ``threshold = 3.0``.
        score_batch_size: latents per batch when scoring.
        seed: K-means, weights, data order and jitter.
    """

    enabled: bool = False
    num_clusters: int = 8
    kmeans_n_init: int = 4
    typical_normal_fraction: float = 0.5
    min_cluster_share: float = 0.03
    typical_noisy_fraction: float = 0.03
    reconstructor_channels: int = 32
    reconstructor_depth: int = 2
    bottleneck_channels: int = 8
    discriminator_channels: int = 32
    discriminator_depth: int = 3
    reconstructor_steps: int = 300
    discriminator_steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    input_noise: float = 0.05
    combination: Literal["max", "mean"] = "max"
    reconstruction_weight: float = 0.5
    threshold: float | None = None
    remove_fraction: float | None = None
    score_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_clusters", "kmeans_n_init", "reconstructor_channels", "reconstructor_depth", "bottleneck_channels",
                     "discriminator_channels", "discriminator_depth", "reconstructor_steps", "discriminator_steps", "batch_size",
                     "score_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("typical_normal_fraction", "typical_noisy_fraction"):
            _in_open_unit(self, name)
        if not (isinstance(self.min_cluster_share, (int, float)) and 0.0 <= self.min_cluster_share < 1.0 / self.num_clusters):
            raise ValueError(f"min_cluster_share must be in [0, 1 / num_clusters = {1.0 / self.num_clusters:.3g}), got {self.min_cluster_share!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.input_noise, (int, float)) and math.isfinite(self.input_noise) and self.input_noise >= 0):
            raise ValueError(f"input_noise must be a finite number >= 0, got {self.input_noise!r}")
        if not (isinstance(self.reconstruction_weight, (int, float)) and 0.0 <= self.reconstruction_weight <= 1.0):
            raise ValueError(f"reconstruction_weight must be in [0, 1], got {self.reconstruction_weight!r}")
        if self.combination not in COMBINATIONS:
            raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, got {self.combination!r}")
        if self.threshold is not None and self.remove_fraction is not None:
            raise ValueError(f"threshold ({self.threshold}) and remove_fraction ({self.remove_fraction}): give at most one of them")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a finite number or null, got {self.threshold!r}")
        if self.remove_fraction is not None:
            _in_open_unit(self, "remove_fraction")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def removal(self) -> tuple[str, float]:
        """``("fraction", remove_fraction)`` or ``("threshold", threshold or 3.0)``."""
        if self.remove_fraction is not None:
            return "fraction", float(self.remove_fraction)
        return "threshold", float(DEFAULT_THRESHOLD if self.threshold is None else self.threshold)


@dataclass
class NoiseFilterResult:
    """What :func:`run_noise_filter` decided. ``scores``: ``(N,)`` arrays in ``item_ids`` order:
    ``cluster``, ``distance``, ``typical_normal`` / ``typical_noisy`` (bool), the pipeline's
    ``reconstruction_error``, ``discriminator_logit``, ``discriminator_probability``, ``combined``,
    and ``removed`` (bool). ``counts``: items, clusters, eligible clusters, typical normal,
    typical noisy, removed, kept."""

    kept_ids: list[str]
    removed_ids: list[str]
    scores: dict[str, np.ndarray]
    threshold: float
    counts: dict[str, int]
    output_dir: Path


def check_inputs(latents: torch.Tensor, item_ids: Sequence[str], section: NoiseFilterSection, images: torch.Tensor | None) -> None:
    """Shapes, finiteness and sizes, before any work (each error names the argument or field)."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or not latents.is_floating_point():
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be a floating-point (N, C, h, w) tensor, got {got}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold NaN or inf values")
    count = latents.shape[0]
    ids = list(item_ids)
    if len(ids) != count:
        raise ValueError(f"item_ids has {len(ids)} ids for {count} latents")
    if not all(isinstance(i, str) and i and "\n" not in i and "\r" not in i for i in ids):
        raise ValueError("item_ids must be non-empty strings without line breaks (kept.txt has one per line)")
    if len(set(ids)) != count:
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"item_ids must be unique; {duplicate!r} appears more than once")
    if images is not None and (not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != count or images.shape[1] != 1):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be ({count}, 1, H, W) like the latents, got {got}")
    if section.num_clusters > count:
        raise ConfigError(f"{SECTION}.num_clusters", f"{section.num_clusters} clusters for {count} items")
    if round(section.typical_noisy_fraction * count) < 1:
        raise ConfigError(f"{SECTION}.typical_noisy_fraction", f"{section.typical_noisy_fraction} of {count} items is no item")


def cluster_latents(flat: np.ndarray, section: NoiseFilterSection) -> tuple[np.ndarray, np.ndarray]:
    """K-means on ``flat (N, D)`` -> ``(cluster (N,) int, distance to its centroid (N,) float64)``."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=section.num_clusters, n_init=section.kmeans_n_init, random_state=section.seed)
    clusters = kmeans.fit_predict(flat)
    distances = np.linalg.norm(flat.astype(np.float64) - kmeans.cluster_centers_[clusters].astype(np.float64), axis=1)
    return clusters.astype(np.int64), distances


def typical_normal_mask(clusters: np.ndarray, distances: np.ndarray, section: NoiseFilterSection) -> tuple[np.ndarray, int]:
    """``(mask (N,), eligible clusters)``: the closest ``typical_normal_fraction`` of each cluster
    holding at least ``min_cluster_share`` of the items (ties broken by index)."""
    mask = np.zeros(len(clusters), dtype=bool)
    eligible = 0
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        if len(members) < section.min_cluster_share * len(clusters):
            continue
        eligible += 1
        closest = members[np.argsort(distances[members], kind="stable")]
        mask[closest[: max(1, math.ceil(section.typical_normal_fraction * len(members)))]] = True
    return mask, eligible


def typical_noisy_mask(errors: np.ndarray, normal: np.ndarray, section: NoiseFilterSection) -> np.ndarray:
    """The ``typical_noisy_fraction * N`` highest ``errors`` among items outside ``normal``."""
    candidates = np.flatnonzero(~normal)
    wanted = int(round(section.typical_noisy_fraction * len(errors)))
    if wanted > len(candidates):
        raise ConfigError(f"{SECTION}.typical_noisy_fraction", f"{wanted} typical noisy items wanted but only {len(candidates)} "
                          "items are outside the typical normal set; lower it or typical_normal_fraction")
    mask = np.zeros(len(errors), dtype=bool)
    mask[candidates[np.argsort(-errors[candidates], kind="stable")[:wanted]]] = True
    return mask


def _train(model: torch.nn.Module, task, dataset: TensorDataset, section: NoiseFilterSection, steps: int, output_dir: Path,
           device: torch.device, progress_bar: bool) -> None:
    config = TrainConfig(
        output_dir=str(output_dir), max_steps=steps, batch_size=min(section.batch_size, len(dataset)), lr=section.lr,
        optimizer="adam", betas=(0.9, 0.999), weight_decay=0.0, min_lr=0.0, log_every=max(1, steps // 10),
        save_checkpoints=False, tensorboard=False, progress_bar=progress_bar, seed=section.seed, device=str(device),
    )
    Trainer(model, task, dataset, config).fit()
    model.eval()


def removal_threshold(combined: np.ndarray, section: NoiseFilterSection) -> float:
    """The threshold of ``section.removal``: as given, or the lowest combined score of the top share."""
    rule, value = section.removal
    if rule == "threshold":
        return value
    count = int(round(value * len(combined)))
    if count == 0:  # nothing to remove: just above the highest score
        return float(np.nextafter(combined.max(), np.inf))
    return float(np.sort(combined)[::-1][count - 1])


def run_noise_filter(
    latents: torch.Tensor,
    item_ids: list[str],
    section: NoiseFilterSection,
    output_dir: Path,
    *,
    images: torch.Tensor | None = None,
    item_notes: Sequence[str | None] | None = None,
    device: str | torch.device = "cpu",
    progress_bar: bool = False,
) -> NoiseFilterResult:
    """Fit LNFS on ``latents (N, C, h, w)`` (ids ``item_ids``), decide removals, write ``output_dir``.

    ``images (N, 1, H, W)`` in [0, 1] make ``removed.png``; ``item_notes`` (N,) are shown in its
    titles (e.g. the planted corruption kind). See the module docstring for the stages and files.
    """
    check_inputs(latents, item_ids, section, images)
    if item_notes is not None and len(item_notes) != len(item_ids):
        raise ValueError(f"item_notes has {len(item_notes)} entries for {len(item_ids)} items")
    device = resolve_device(device, field="device")
    refuse_file_in_path(output_dir, "output_dir")
    ids = list(item_ids)
    latents = latents.detach().float().cpu()
    result: dict = {}

    def write(folder: Path) -> None:
        result.update(_fit_and_write(latents, ids, section, folder, device, progress_bar, images, item_notes))

    output_dir = replace_folder(output_dir, write)
    return NoiseFilterResult(output_dir=Path(output_dir), **result)


def _fit_and_write(latents, ids, section, folder, device, progress_bar, images, item_notes) -> dict:
    seed_everything(section.seed)
    count, channels = latents.shape[:2]
    mean = latents.double().mean(dim=(0, 2, 3))
    std = latents.double().std(dim=(0, 2, 3)).clamp_min(1e-6)
    latent_mean, latent_std = [float(v) for v in mean], [float(v) for v in std]
    standard = standardise(latents, latent_mean, latent_std)

    clusters, distances = cluster_latents(standard.reshape(count, -1).numpy(), section)
    normal, eligible = typical_normal_mask(clusters, distances, section)
    log.info("LNFS clustering: %d items, %d clusters (%d large enough), %d typical normal", count, section.num_clusters, eligible, normal.sum())

    reconstructor = LatentReconstructor(LatentReconstructorConfig(
        in_channels=channels, hidden_channels=section.reconstructor_channels, depth=section.reconstructor_depth,
        bottleneck_channels=section.bottleneck_channels, norm_groups=_groups(section.reconstructor_channels)))
    _train(reconstructor, LatentReconstructionTask(section.input_noise), TensorDataset(standard[torch.from_numpy(normal)]),
           section, section.reconstructor_steps, folder / "training" / "reconstructor", device, progress_bar)
    errors = batched(reconstructor.reconstruction_error, standard, batch_size=section.score_batch_size, device=device,
                     desc="reconstruct", progress=progress_bar)
    noisy = typical_noisy_mask(errors, normal, section)

    discriminator = LatentDiscriminator(LatentDiscriminatorConfig(
        in_channels=channels, hidden_channels=section.discriminator_channels, depth=section.discriminator_depth,
        norm_groups=_groups(section.discriminator_channels)))
    chosen = torch.from_numpy(normal | noisy)
    targets = torch.from_numpy(noisy.astype(np.float32))[chosen]
    task = LatentDiscriminationTask(pos_weight=float(normal.sum()) / float(noisy.sum()), input_noise=section.input_noise)
    _train(discriminator, task, TensorDataset(standard[chosen], targets), section, section.discriminator_steps,
           folder / "training" / "discriminator", device, progress_bar)

    fit = dict(latent_mean=latent_mean, latent_std=latent_std, combination=section.combination,
               reconstruction_weight=section.reconstruction_weight)
    placeholder = fit_parameters(latents, np.ones(1), np.zeros(1), **fit)
    noise_filter = LatentNoiseFilter(reconstructor, discriminator, placeholder, device=device, batch_size=section.score_batch_size)
    raw_errors, logits = noise_filter.raw_scores(latents, progress=progress_bar)
    noise_filter.parameters = fit_parameters(latents, raw_errors, logits, **fit)
    scores = noise_filter.scores_from_raw(raw_errors, logits)
    threshold = removal_threshold(scores["combined"], section)
    noise_filter.parameters.threshold = threshold
    removed = scores["combined"] >= threshold
    scores = {"cluster": clusters, "distance": distances, "typical_normal": normal, "typical_noisy": noisy, **scores, "removed": removed}

    kept_ids = [i for i, r in zip(ids, removed) if not r]
    removed_ids = [i for i, r in zip(ids, removed) if r]
    counts = {"items": int(count), "clusters": section.num_clusters, "eligible_clusters": eligible, "typical_normal": int(normal.sum()),
              "typical_noisy": int(noisy.sum()), "removed": len(removed_ids), "kept": len(kept_ids)}
    rule, value = section.removal
    noise_filter.save_pretrained(folder, extra={
        "settings": to_dict(section), "removal": {"rule": rule, "value": value}, "threshold": threshold, "counts": counts,
        "combination": COMBINATION_TEXT[section.combination],
    })
    write_scores(folder / "scores.csv", ids, scores)
    (folder / "kept.txt").write_text("".join(i + "\n" for i in kept_ids), encoding="utf-8")
    (folder / "removed.txt").write_text("".join(i + "\n" for i in removed_ids), encoding="utf-8")
    if images is not None:
        save_figure(folder / "removed.png", images, scores, item_notes)
    log.info("LNFS: removed %d of %d items (combined >= %.3g; %s rule)", len(removed_ids), count, threshold, rule)
    return {"kept_ids": kept_ids, "removed_ids": removed_ids, "scores": scores, "threshold": threshold, "counts": counts}


def _groups(channels: int) -> int:
    """GroupNorm groups for a width: 8 where it divides, else the largest divisor up to 8."""
    return next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)


def write_scores(path: Path, ids: list[str], scores: dict[str, np.ndarray]) -> None:
    """``scores.csv``: one row per item, columns :data:`SCORE_COLUMNS`."""
    typical = np.where(scores["typical_normal"], "normal", np.where(scores["typical_noisy"], "noisy", ""))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCORE_COLUMNS)
        for index, item in enumerate(ids):
            writer.writerow([
                item, int(scores["cluster"][index]), f"{scores['distance'][index]:.6g}", typical[index],
                f"{scores['reconstruction_error'][index]:.6g}", f"{scores['discriminator_logit'][index]:.6g}",
                f"{scores['discriminator_probability'][index]:.6g}", f"{scores['combined'][index]:.6g}", int(scores["removed"][index]),
            ])


def save_figure(path: Path, images: torch.Tensor, scores: dict[str, np.ndarray], notes: Sequence[str | None] | None,
                max_removed: int = 32, reference: int = 4) -> Path:
    """``removed.png``: the removed items by score (beyond ``max_removed``, the highest and the
    lowest half of them: the clearest cases and the likeliest false alarms), then the
    ``reference`` highest-scoring kept items (the near misses) and the ``reference`` lowest."""
    from cxrfm.figures.noise_filter import save_removed_figure

    combined, removed = scores["combined"], scores["removed"]
    order = np.argsort(-combined, kind="stable")
    all_removed = [i for i in order if removed[i]]
    shown_removed = all_removed
    if len(all_removed) > max_removed:
        shown_removed = all_removed[: max_removed // 2] + all_removed[len(all_removed) - (max_removed - max_removed // 2):]
    kept = [i for i in order if not removed[i]]
    shown_kept = kept[:reference] + [i for i in kept[-reference:] if i not in kept[:reference]]

    def pick(rows: list[int]) -> np.ndarray:
        return images[rows, 0].detach().float().cpu().clamp(0, 1).numpy() if rows else np.zeros((0, *images.shape[-2:]), np.float32)

    def note(rows: list[int]) -> list[str] | None:
        return None if notes is None else [notes[i] or "clean" for i in rows]

    return save_removed_figure(path, pick(shown_removed), combined[shown_removed], pick(shown_kept), combined[shown_kept],
                               removed_notes=note(shown_removed), kept_notes=note(shown_kept),
                               title=f"LNFS: {len(all_removed)} of {len(combined)} removed ({len(shown_removed)} shown, red), "
                                     f"{len(shown_kept)} kept shown for reference (green)")

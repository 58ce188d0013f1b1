"""Stage 2 of a Diff-CXR run: LNFS on the autoencoder latents of the training pairs
(:func:`cxrfm.recipes.diff_cxr.noise_filter.run_noise_filter`); ``<run>/filter/kept.txt`` then
restricts every later stage to the kept pairs."""

from __future__ import annotations

import logging
from pathlib import Path

from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
from cxrfm.recipes.diff_cxr.noise_filter import run_noise_filter
from cxrfm.recipes.diff_cxr.stages import encode_latents, load_autoencoder, load_pairs

log = logging.getLogger(__name__)


def run_filter_stage(config: DiffCXRConfig, *, resume: bool = False) -> dict:
    """``resume`` is accepted for symmetry with the other stages; the filter's networks are small and
    always retrained."""
    if not config.filter.enabled:
        log.warning("filter.enabled is false: later stages will ignore this filter's kept list until it is set")
    pairs = load_pairs(config, "train")
    latents = encode_latents(load_autoencoder(config), pairs.images)
    result = run_noise_filter(latents, pairs.ids, config.filter, Path(config.output_dir) / "filter", images=pairs.images)
    log.info("noise filter: kept %d, removed %d of %d training pairs", len(result.kept_ids), len(result.removed_ids), len(pairs.ids))
    return {"kept": len(result.kept_ids), "removed": len(result.removed_ids), "threshold": float(result.threshold)}

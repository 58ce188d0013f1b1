"""Image-tokenizer reconstructions: original | reconstruction | residual (UAR's Fig. 6)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def save_reconstructions(originals: np.ndarray, reconstructions: np.ndarray, path: Path) -> Path:
    """One row per image ``(N, H, W)`` in [0, 1]: the image, its reconstruction from tokens, |residual|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(originals)
    figure, axes = plt.subplots(count, 3, figsize=(7.5, 2.6 * count), squeeze=False)
    for row, (original, reconstruction) in enumerate(zip(originals, reconstructions)):
        panels = (("original", original, 1.0), ("from tokens", reconstruction, 1.0), ("|residual|", np.abs(original - reconstruction), 0.5))
        for axis, (title, image, top) in zip(axes[row], panels):
            axis.imshow(image, cmap="gray", vmin=0, vmax=top)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    log.info("wrote %s", path)
    return path

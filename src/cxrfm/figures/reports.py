"""Generated reports beside their images (the report stage's example figure)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def save_report_examples(images: Sequence[torch.Tensor], rows: Sequence[dict], path: Path, *, width: int = 70) -> Path:
    """One row per study: the image ``(1, H, W)`` and its generated vs reference report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    figure, axes = plt.subplots(count, 2, figsize=(11, 2.8 * count), gridspec_kw={"width_ratios": [1, 3]}, squeeze=False)
    for (image_axis, text_axis), image, row in zip(axes, images, rows):
        image_axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        image_axis.set_title(str(row.get("id", "")), fontsize=8)
        image_axis.axis("off")
        text = (
            "generated:\n" + textwrap.fill(row.get("prediction") or "(empty)", width)
            + "\n\nreference:\n" + textwrap.fill(row.get("reference") or "(none)", width)
        )
        text_axis.text(0.0, 1.0, text, va="top", ha="left", fontsize=8, family="monospace", transform=text_axis.transAxes)
        text_axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    log.info("wrote %s", path)
    return path

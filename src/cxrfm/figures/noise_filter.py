"""What LNFS removed: thumbnails of the removed items, beside kept ones for reference."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def save_removed_figure(
    path: Path,
    removed: np.ndarray,
    removed_scores: Sequence[float],
    kept: np.ndarray,
    kept_scores: Sequence[float],
    *,
    removed_notes: Sequence[str | None] | None = None,
    kept_notes: Sequence[str | None] | None = None,
    columns: int = 8,
    title: str | None = None,
) -> Path:
    """Removed images ``(R, H, W)`` in [0, 1] (red titles), then kept ones ``(K, H, W)`` (green titles).

    Each thumbnail is titled with its combined score and, where given, a note (the planted
    corruption kind in a benchmark; "clean" / a kind tells a miss from a false alarm at a glance).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removed, kept = np.asarray(removed, dtype=np.float32), np.asarray(kept, dtype=np.float32)
    removed_notes = list(removed_notes) if removed_notes is not None else [None] * len(removed)
    kept_notes = list(kept_notes) if kept_notes is not None else [None] * len(kept)
    groups = [("removed", "tab:red", removed, list(removed_scores), removed_notes),
              ("kept", "tab:green", kept, list(kept_scores), kept_notes)]
    rows = [max(1, math.ceil(len(removed) / columns)), math.ceil(len(kept) / columns)]  # one row for "nothing removed"
    total_rows = sum(rows)
    figure, axes = plt.subplots(total_rows, columns, figsize=(1.6 * columns, 1.9 * total_rows + 0.4), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    row = 0
    for (name, colour, images, scores, notes), count in zip(groups, rows):
        for index, image in enumerate(images):
            axis = axes[row + index // columns, index % columns]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            note = f"\n{notes[index]}" if notes[index] else ""
            axis.set_title(f"{name} {scores[index]:.2f}{note}", fontsize=7, color=colour)
        row += count
    if not len(removed):
        axes[0, 0].set_title("nothing removed", fontsize=8, color="tab:red")
    figure.suptitle(title or f"LNFS: {len(removed)} removed (red), {len(kept)} kept for reference (green)", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    log.info("wrote %s", path)
    return path

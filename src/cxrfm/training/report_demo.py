"""The main job's report stage: a small report generator on phantoms, scored, with an example figure.

:func:`run_report_demo` runs the shipped ``report-tiny-phantom`` config (about a minute on two CPU
cores) around the encoder the demo's pretraining stage exported, scores the held-out phantoms and
draws ``figures/report_examples.png``. The summary says plainly whether the model reads the images:
``teacher_forced.loss`` (test reports given their own images) against ``loss_swapped_images``
(given another study's images); equal values mean it learnt the phantoms' report language only.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DEMO_CONFIG = "report-tiny-phantom"


def demo_overrides(run_dir: Path, encoder_dir: Path | None, seed: int, language: str) -> list[str]:
    """``--set`` overrides that point the shipped config at the demo's run folder and encoder."""
    overrides = [
        f"train.output_dir={Path(run_dir) / 'report'}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        f"tokenizer.language={language}",
        "train.save_checkpoints=false",
        "train.tensorboard=false",
        "train.progress_bar=false",
    ]
    if encoder_dir is not None:
        overrides.append(f"model.encoder_dir={encoder_dir}")
    return overrides


def run_report_demo(run_dir: Path, encoder_dir: Path | None, seed: int = 0, language: str = "en", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train and score a report generator on phantoms; returns a JSON-ready summary.

    Writes ``<run_dir>/report/`` (model, metrics, predictions) and
    ``<run_dir>/figures/report_examples.png``. ``encoder_dir``: the pretraining stage's encoder
    (None: a random ViT). ``overrides``: further ``--set`` style changes to the config.
    """
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.training.report import ReportTrainConfig, build_report_split, run_report_training

    run_dir = Path(run_dir)
    config = load_config(ReportTrainConfig, resolve_config_path(DEMO_CONFIG), [*demo_overrides(run_dir, encoder_dir, seed, language), *overrides])
    result = run_report_training(config)
    rows = [json.loads(line) for line in result.predictions_path.read_text(encoding="utf-8").splitlines()]
    size = tuple(config.model.image_size) if config.model.image_size else None
    test_split = build_report_split(config.data, "test", size or _encoder_size(result.model_dir), 1, language)
    shown = min(4, len(rows))
    images = [test_split[i].image for i in range(shown)]
    figure = save_report_examples(images, rows[:shown], run_dir / "figures" / "report_examples.png")
    scores = result.test_scores or {}
    return {
        "model": str(result.model_dir),
        "encoder": None if encoder_dir is None else str(encoder_dir),
        "language": language,
        "vocab_size": result.vocab_size,
        "studies": result.split_sizes,
        "selected": None if result.train.best is None else {k: v for k, v in result.train.best.items() if k != "path"},
        "test_nlg": scores.get("nlg", {}),
        "test_clinical": {k: v for k, v in scores.get("clinical", {}).items() if isinstance(v, float)},
        "clinical_convention": scores.get("clinical_convention"),
        "teacher_forced": scores.get("teacher_forced", {}),
        "distinct_predictions": len({row["prediction"] for row in rows}),
        "figure": str(figure.relative_to(run_dir)),
        "metrics": str(result.output_dir / "metrics_test.json"),
        "seconds": {name: round(value, 1) for name, value in result.seconds.items()},
    }


def _encoder_size(model_dir: Path) -> tuple[int, int]:
    record = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return tuple(record["encoder"]["image_size"])


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

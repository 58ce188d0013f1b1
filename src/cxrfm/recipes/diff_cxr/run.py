"""One Diff-CXR run, stage by stage: ``cxrfm diffusion train --config diff-cxr-tiny-phantom``.

``stages`` picks a subset in order (``autoencoder, filter, text, denoiser, adapter, evaluation``);
the filter runs only when ``filter.enabled`` and the adapter only when ``adapter.enabled``. A
stage whose model folder is already there is skipped (``force`` redoes it), so a stopped run
continues where it left off; ``resume`` also resumes the interrupted stage from its checkpoints.
A finished stage's summary goes to ``<output_dir>/summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from cxrfm.config import save_config
from cxrfm.errors import ConfigError
from cxrfm.pipelines.report_to_image import run_paths
from cxrfm.recipes.diff_cxr.config import STAGES, DiffCXRConfig
from cxrfm.recipes.diff_cxr.evaluate import run_evaluation_stage
from cxrfm.recipes.diff_cxr.filter_stage import run_filter_stage
from cxrfm.recipes.diff_cxr.stages import (
    run_adapter_stage,
    run_autoencoder_stage,
    run_denoiser_stage,
    run_text_stage,
)
from cxrfm.utils.runtime import seed_everything

log = logging.getLogger(__name__)

RUNNERS = {
    "autoencoder": run_autoencoder_stage, "filter": run_filter_stage, "text": run_text_stage,
    "denoiser": run_denoiser_stage, "adapter": run_adapter_stage,
}


def stage_done(config: DiffCXRConfig, stage: str) -> bool:
    root = Path(config.output_dir)
    markers = {**{name: path / "config.json" for name, path in run_paths(root).items() if name != "scheduler"},
               "filter": root / "filter" / "kept.txt", "evaluation": root / "evaluation" / "metrics.json"}
    return markers[stage].is_file()


def enabled_stages(config: DiffCXRConfig, stages: list[str] | None) -> list[str]:
    chosen = list(STAGES) if not stages else list(stages)
    unknown = [stage for stage in chosen if stage not in STAGES]
    if unknown:
        raise ConfigError("stages", f"unknown stage(s) {unknown} (known: {', '.join(STAGES)})")
    if stages is None:
        chosen = [s for s in chosen if (s != "filter" or config.filter.enabled) and (s != "adapter" or config.adapter.enabled)]
    return [stage for stage in STAGES if stage in chosen]


def run_diff_cxr(config: DiffCXRConfig, stages: list[str] | None = None, *, resume: bool = False, force: bool = False) -> dict:
    """Run the chosen stages; returns ``summary.json``'s content (per stage: seconds and results).

    Once a stage (re)trains, every later chosen stage reruns too: its inputs changed. Later stages
    that were not chosen are left as they are, with a warning that they are now stale."""
    chosen = enabled_stages(config, stages)  # an unknown stage is refused before anything is written
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    # ``evaluate`` alone keeps the training config and writes its own beside its results.
    save_config(config, root / ("evaluation" if chosen == ["evaluation"] else "") / "config.yaml")
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    rerun = force
    for stage in chosen:
        if stage_done(config, stage) and not rerun:
            log.info("stage %s: already done in %s (force to redo)", stage, root / stage)
            continue
        seed_everything(config.seed)
        started = time.perf_counter()
        log.info("stage %s ...", stage)
        result = run_evaluation_stage(config) if stage == "evaluation" else RUNNERS[stage](config, resume=resume)
        summary[stage] = {"seconds": round(time.perf_counter() - started, 1), "result": result}
        summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        rerun = rerun or stage != "evaluation"
    stale = [s for s in STAGES[STAGES.index(chosen[-1]) + 1:] if rerun and stage_done(config, s)] if chosen else []
    if stale:
        log.warning("stages %s were trained on the previous %s: rerun them (cxrfm diffusion train --force)", stale, chosen[-1])
    return summary

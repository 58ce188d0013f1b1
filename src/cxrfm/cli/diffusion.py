"""``cxrfm diffusion ...``: Diff-CXR, report -> chest X-ray latent diffusion (shared/papers/003).

    cxrfm diffusion train --config diff-cxr-tiny-phantom            # every stage, in order
    cxrfm diffusion autoencoder|filter|text|denoiser|adapter --config ...   # one stage
    cxrfm diffusion evaluate --config ...                            # score the run's test reports
    cxrfm diffusion sample --run runs/diff-cxr-tiny-phantom --report "Moderate left pleural effusion." --out out/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cxrfm.cli.common import add_config_arguments, positive_int

log = logging.getLogger(__name__)
DEFAULT_CONFIG = "diff-cxr-tiny-phantom"
STAGE_HELP = {
    "autoencoder": "stage 1: the KL autoencoder (PSNR/SSIM on held-out images)",
    "filter": "stage 2: LNFS, latent noise filtering of the training pairs",
    "text": "stage 3: the information squeeze trained contrastively (retrieval R@k)",
    "denoiser": "stage 4: the U-ViT denoiser",
    "adapter": "stage 5: DKIM, the disease-knowledge adapter",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diffusion", help="Diff-CXR: report -> chest X-ray latent diffusion")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="run every stage in order (finished stages are skipped)")
    _stage_arguments(train)
    train.set_defaults(func=_run, stages=None)
    for stage, text in STAGE_HELP.items():
        one = actions.add_parser(stage, help=text)
        _stage_arguments(one)
        one.set_defaults(func=_run, stages=[stage])
    evaluate = actions.add_parser("evaluate", help="generate for the test reports and score them (FD/KID, mAUC, controllability)")
    add_config_arguments(evaluate, default_config=DEFAULT_CONFIG)
    evaluate.set_defaults(func=_run, stages=["evaluation"], resume=False, force=True)
    sample = actions.add_parser("sample", help="generate images for reports with a trained run")
    sample.add_argument("--run", required=True, type=Path, help="a Diff-CXR run folder")
    source = sample.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", action="append", help="a report text (repeatable)")
    source.add_argument("--reports", type=Path, help="a text file, one report per line")
    sample.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    sample.add_argument("--steps", type=positive_int, default=25, help="sampler steps (default 25)")
    sample.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=positive_int, default=16)
    sample.add_argument("--no-adapter", action="store_true", help="use the plain U-ViT even when the run has a DKIM adapter")
    sample.set_defaults(func=_sample)


def _stage_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_config=DEFAULT_CONFIG)
    parser.add_argument("--resume", action="store_true", help="resume an interrupted stage from its checkpoints")
    parser.add_argument("--force", action="store_true", help="redo stages whose model folder already exists")


def _run(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.diff_cxr.config import DiffCXRConfig
    from cxrfm.recipes.diff_cxr.run import run_diff_cxr

    config = load_config(DiffCXRConfig, resolve_config_path(args.config), args.overrides)
    run_diff_cxr(config, args.stages, resume=args.resume, force=args.force)
    log.info("Diff-CXR run: %s", config.output_dir)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from cxrfm.errors import ConfigError
    from cxrfm.io import write_image
    from cxrfm.pipelines.report_to_image import ReportToImagePipeline

    if not args.guidance >= 0 or args.guidance == float("inf"):  # NaN fails the comparison
        raise ConfigError("--guidance", f"must be a finite number >= 0, got {args.guidance}")
    if args.reports is not None:
        if not args.reports.is_file():
            raise ConfigError("--reports", f"{args.reports} is not a file")
        reports = [line.strip() for line in args.reports.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        reports = [text.strip() for text in args.report if text.strip()]
    if not reports:
        raise ConfigError("--report", "no non-empty report text given")
    pipe = ReportToImagePipeline.from_pretrained(args.run, use_adapter=False if args.no_adapter else None)
    images = pipe(reports, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  generator=torch.Generator().manual_seed(args.seed), batch_size=args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        write_image(args.out / f"{index:04d}.png", image[0].numpy())
    (args.out / "reports.txt").write_text("\n".join(reports) + "\n", encoding="utf-8")
    log.info("wrote %d images to %s", len(reports), args.out)
    return 0

"""``cxrfm pretrain``: masked-autoencoder pretraining (HD-MAE with context-aware masking).

    cxrfm pretrain --config mae-tiny-phantom
    cxrfm pretrain --config hd-mae-vitl-1280 --set train.output_dir=runs/hd --set data.sources.0.root=...
    cxrfm pretrain --config my.yaml --resume              # continue from the latest checkpoint
    torchrun --nproc_per_node=8 -m cxrfm.cli.main pretrain --config hd-mae-vitl-1280

``--config`` takes a YAML path or the name of a shipped config (``src/cxrfm/configs``). Outputs go
to ``train.output_dir``: config.yaml, checkpoints/, metrics.jsonl, tensorboard/, figures/, encoder/.
"""

from __future__ import annotations

import argparse
import logging
import os

from cxrfm.cli.common import add_config_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="MAE pretraining with context-aware masking (default config: mae-tiny-phantom)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, default_config="mae-tiny-phantom")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from train.output_dir's latest checkpoint (or the given checkpoint folder)",
    )
    parser.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.pretrain import PretrainConfig, run_pretraining

    if int(os.environ.get("RANK", "0")) > 0:
        logging.getLogger().setLevel(logging.WARNING)  # one rank reports; the others only warn
    path = resolve_config_path(args.config)
    config = load_config(PretrainConfig, path, args.overrides)
    result = run_pretraining(config, resume=args.resume)
    log.info(
        "done: step %d, loss %.4f; checkpoint %s; encoder %s",
        result.step,
        result.metrics.get("loss", float("nan")),
        result.last_checkpoint,
        result.output_dir / "encoder",
    )
    return 0

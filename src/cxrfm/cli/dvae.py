"""``cxrfm dvae train --config dvae-cxr [--set key=value ...]``: UAR's image tokenizer (a discrete VAE)."""

from __future__ import annotations

import argparse
import logging

from cxrfm.cli.common import add_config_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dvae", help="train UAR's discrete image tokenizer")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train a dVAE and score its reconstructions (default config: tiny, on phantoms)")
    add_config_arguments(train, default_config="dvae-tiny-phantom")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.dvae import DVAETrainConfig, run_dvae_training

    config = load_config(DVAETrainConfig, resolve_config_path(args.config), args.overrides)
    run_dvae_training(config, resume=args.resume)
    log.info("dVAE model: %s/model", config.train.output_dir)
    return 0

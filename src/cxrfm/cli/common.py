"""Argument helpers shared by the verbs."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """``--config FILE`` and repeatable ``--set key.sub=value`` overrides."""
    parser.add_argument(
        "--config",
        default=default_config,
        help="YAML run config (a path, or the name of a shipped config such as 'tiny-phantom')",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set train.lr=1e-4 (repeatable)",
    )

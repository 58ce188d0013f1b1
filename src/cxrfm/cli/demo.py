"""``cxrfm demo``: the main job on the embedded default (see :mod:`cxrfm.recipes.demo`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cxrfm.cli.common import add_config_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from cxrfm.recipes import demo

    parser = subparsers.add_parser(
        "demo",
        help="the main job on procedural phantoms: contours, context-aware MAE pretraining, reports, findings (CPU, minutes)",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", default="runs/demo", help="run folder (default runs/demo; runs/demo-1, -2, ... when it already holds a run)"
    )
    add_config_arguments(parser, default_config="demo")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.demo import DemoConfig, run_demo
    from cxrfm.utils import make_run_dir

    config = load_config(DemoConfig, resolve_config_path(args.config), args.overrides)
    requested = Path(args.out)
    out = make_run_dir(requested.parent, requested.name)  # never overwrite an earlier run's work
    if out != requested:
        log.info("%s already holds a run; writing to %s", requested, out)
    run_demo(config, out)
    return 0

"""``cxrfm`` entry point: one sub-command module per verb.

Each module in :data:`VERB_MODULES` defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returns an exit code). Modules import heavy dependencies
inside their handlers so ``cxrfm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cxrfm import __version__
from cxrfm.errors import CXRFMError
from cxrfm.utils import configure_logging

VERB_MODULES = (
    "cxrfm.cli.demo",
    "cxrfm.cli.phantom",
    "cxrfm.cli.segment",
    "cxrfm.cli.pretrain",
    "cxrfm.cli.report",
    "cxrfm.cli.classify",
    "cxrfm.cli.shards",
)

log = logging.getLogger("cxrfm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrfm",
        description="Chest X-ray foundation models: HD MAE pretraining with context-aware masking and its downstream tasks.",
    )
    parser.add_argument("--version", action="version", version=f"cxrfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except CXRFMError as exc:
        # Our errors already name the file or field: show them without a traceback.
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

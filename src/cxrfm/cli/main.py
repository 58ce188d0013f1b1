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
    "cxrfm.cli.dvae",
    "cxrfm.cli.diffusion",
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


EXIT_USER_ERROR = 2  # argparse uses 2 for bad arguments too
EXIT_INTERRUPTED = 130


def run_verb(args: argparse.Namespace) -> int:
    """The one place where a verb's failure on the user's input becomes one line and an exit code.

    cxrfm's own errors (:class:`CXRFMError`: ImageReadError, DatasetError, ConfigError,
    CheckpointError) already name the file or field; an operating-system error names the path.
    Both are logged as a single line and exit with :data:`EXIT_USER_ERROR`. Anything else is a
    bug in cxrfm and keeps its traceback.
    """
    try:
        return int(args.func(args) or 0)
    except CXRFMError as exc:
        log.error("%s", one_line(str(exc)))
    except OSError as exc:  # a path the user gave: missing, a folder, not writable, disk full
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("%s%s", where, one_line(exc.strerror or str(exc)))
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_USER_ERROR


def one_line(message: str) -> str:
    """A message folded onto one line (library reasons sometimes span several)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    return run_verb(args)


if __name__ == "__main__":
    sys.exit(main())

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


# Argument types: argparse turns their ArgumentTypeError into one "error: argument --x: ..." line
# and exit code 2, before any work starts.
def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, batch sizes, beam sizes)."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (workers, bootstrap resamples, components to keep)."""
    return _bounded_int(text, 0)


def fraction(text: str) -> float:
    """A finite number in [0, 1] (split shares, probabilities, thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value

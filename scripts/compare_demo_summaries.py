"""Compare two main-job summaries (``runs/<a>/summary.json`` vs ``runs/<b>/summary.json``).

The main job is deterministic, so a refactor must leave every number equal: this prints
``IDENTICAL`` or a unified diff, ignoring the wall-clock ``seconds`` entries and the run folder's
own name (which appears inside paths). Exit code 0 when identical, 1 otherwise.

    python scripts/compare_demo_summaries.py runs/demo-before/summary.json runs/demo/summary.json
"""

from __future__ import annotations

import difflib
import json
import sys


def comparable(value, run_dir: str):
    """The summary without timings, with the run folder replaced by ``<run>``."""
    if isinstance(value, dict):
        return {key: comparable(item, run_dir) for key, item in value.items() if key != "seconds"}
    if isinstance(value, list):
        return [comparable(item, run_dir) for item in value]
    if isinstance(value, str):
        return value.replace(run_dir, "<run>")
    return value


def main(before_path: str, after_path: str) -> int:
    texts = []
    for path in (before_path, after_path):
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        texts.append(json.dumps(comparable(summary, summary["run_dir"]), indent=1, sort_keys=True).splitlines())
    diff = list(difflib.unified_diff(*texts, before_path, after_path, lineterm="", n=1))
    sys.stdout.write("\n".join(diff) + "\n" if diff else "IDENTICAL (timings and the run folder name excluded)\n")
    return 1 if diff else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))

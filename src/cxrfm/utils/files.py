"""Crash-safe file-system writes: one atomic folder swap for the whole toolkit.

A folder is written under a hidden temporary name next to its target, every file and the folder are
flushed to disk (``fsync``), and only then is it renamed into place (a rename is atomic on POSIX
file systems). A crash at any moment leaves either the previous folder or the new one, never a
half-written one. Checkpoints, best-weight folders and exported models all go through here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (new names, renames) to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(directory: Path) -> None:
    """Flush every file below ``directory`` and every folder, so a rename never exposes unwritten data."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(Path(directory))


def replace_folder(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a fresh temporary folder beside ``target``, flush it, swap it in.

    An existing ``target`` is moved aside first and removed after the swap. Returns ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{TEMPORARY_PREFIX}{target.name}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        write(temporary)
        fsync_tree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if target.exists():
        retired = target.with_name(f"{TEMPORARY_PREFIX}retired-{target.name}-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(temporary, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(temporary, target)
    fsync_dir(target.parent)
    return target


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file through a flushed temporary file and an atomic rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)
    return path

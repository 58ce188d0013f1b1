"""The toolkit's error types. Each names the file or field it is about."""

from __future__ import annotations

from pathlib import Path


class CXRFMError(Exception):
    """Base class of every error cxrfm raises on purpose."""


class ImageReadError(CXRFMError):
    """An image file could not be turned into pixels.

    Raised for missing, empty, truncated, corrupt, non-image, multi-frame, over-large
    (decompression bomb) and unsupported files. ``path`` and ``reason`` are kept as attributes.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class DatasetError(CXRFMError):
    """A dataset's metadata (manifest, annotation file, label CSV) is missing or malformed."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"dataset {self.source}: {reason}")


class ConfigError(CXRFMError):
    """A run configuration is malformed: unknown key, wrong type, bad override."""

    def __init__(self, field: str, reason: str, source: str | Path | None = None):
        self.field = field
        self.reason = reason
        self.source = None if source is None else str(source)
        where = f" in {self.source}" if self.source else ""
        super().__init__(f"config field '{field}'{where}: {reason}")


class CheckpointError(CXRFMError):
    """A checkpoint folder is missing files or does not match the model it is loaded into."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")

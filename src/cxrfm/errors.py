"""The toolkit's error types. Each names the file or field it is about."""

from __future__ import annotations

from pathlib import Path


class CXRFMError(Exception):
    """Base class of every error cxrfm raises on purpose."""

    # Subclasses take (path-like, reason) rather than one message; tell pickle how to rebuild them
    # so an error raised inside a DataLoader worker reaches the main process as itself.
    _init_fields: tuple[str, ...] = ()

    def __reduce__(self):
        if not self._init_fields:
            return super().__reduce__()
        return (type(self), tuple(getattr(self, name) for name in self._init_fields))


class ImageReadError(CXRFMError):
    """An image file could not be turned into pixels.

    Raised for missing, empty, truncated, corrupt, non-image, multi-frame, over-large
    (decompression bomb) and unsupported files. ``path`` and ``reason`` are kept as attributes.
    """

    _init_fields = ("path", "reason")

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class DatasetError(CXRFMError):
    """A dataset's metadata (manifest, annotation file, label CSV) is missing or malformed."""

    _init_fields = ("source", "reason")

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"dataset {self.source}: {reason}")


class ConfigError(CXRFMError):
    """A run configuration is malformed: unknown key, wrong type, bad override."""

    _init_fields = ("field", "reason", "source")

    def __init__(self, field: str, reason: str, source: str | Path | None = None):
        self.field = field
        self.reason = reason
        self.source = None if source is None else str(source)
        where = f" in {self.source}" if self.source else ""
        super().__init__(f"config field '{field}'{where}: {reason}")


class CheckpointError(CXRFMError):
    """A checkpoint folder is missing files or does not match the model it is loaded into."""

    _init_fields = ("path", "reason")

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")

"""The toolkit's error types. Each names the file or field it is about."""

from __future__ import annotations

from pathlib import Path


class CXRFMError(Exception):
    """Base class of every error cxrfm raises on purpose."""

    # Subclasses take (path-like, reason) rather than one message; tell pickle how to rebuild them.
    _init_fields: tuple[str, ...] = ()

    def __reduce__(self):
        if not self._init_fields:
            return super().__reduce__()
        return (type(self), tuple(getattr(self, name) for name in self._init_fields))

    def _init_from_worker(self, text: str, fields: tuple[str, ...]) -> bool:
        """Rebuild from torch's DataLoader re-raise, which calls ``ErrorType(text)`` with text =
        "Caught ErrorType in DataLoader worker process N. Original Traceback ...". The original
        one-line message (the traceback's last line) becomes this error's message, so the CLI still
        prints one line and no traceback. Returns False when ``text`` is not such a message."""
        if not (text.startswith("Caught ") and "Original Traceback" in text):
            return False
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
        message = last[len(prefix):] if last.startswith(prefix) else last
        for name in fields:
            setattr(self, name, None)
        self.reason = message
        Exception.__init__(self, message)
        return True


class ImageReadError(CXRFMError):
    """An image file could not be turned into pixels.

    Raised for missing, empty, truncated, corrupt, non-image, multi-frame, over-large
    (decompression bomb) and unsupported files. ``path`` and ``reason`` are kept as attributes.
    """

    _init_fields = ("path", "reason")

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None and self._init_from_worker(str(path), ("path",)):
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class DatasetError(CXRFMError):
    """A dataset's metadata (manifest, annotation file, label CSV) is missing or malformed."""

    _init_fields = ("source", "reason")

    def __init__(self, source: str | Path, reason: str | None = None):
        if reason is None and self._init_from_worker(str(source), ("source",)):
            return
        self.source = str(source)
        self.reason = reason
        super().__init__(f"dataset {self.source}: {reason}")


class ConfigError(CXRFMError):
    """A run configuration is malformed: unknown key, wrong type, bad override."""

    _init_fields = ("field", "reason", "source")

    def __init__(self, field: str, reason: str | None = None, source: str | Path | None = None):
        if reason is None and self._init_from_worker(str(field), ("field", "source")):
            return
        self.field = field
        self.reason = reason
        self.source = None if source is None else str(source)
        where = f" in {self.source}" if self.source else ""
        super().__init__(f"config field '{field}'{where}: {reason}")


class CheckpointError(CXRFMError):
    """A checkpoint folder is missing files or does not match the model it is loaded into."""

    _init_fields = ("path", "reason")

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None and self._init_from_worker(str(path), ("path",)):
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")

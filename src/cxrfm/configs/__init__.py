"""Shipped YAML run configs. ``resolve_config_path("tiny-phantom")`` finds ``tiny-phantom.yaml`` here."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path that exists is returned as is; otherwise a shipped config of that name."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = CONFIG_DIR / f"{Path(str(name_or_path)).stem}.yaml"
    if shipped.exists():
        return shipped
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    from cxrfm.errors import ConfigError

    raise ConfigError("--config", f"'{name_or_path}' is neither a file nor a shipped config ({available})")

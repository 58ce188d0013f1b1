"""Small shared helpers: seeding, logging set-up, run folders, devices, atomic folders. Import no other cxrfm layer."""

from cxrfm.utils.runtime import configure_logging, make_run_dir, move_to_device, resolve_device, seed_everything

__all__ = ["configure_logging", "make_run_dir", "move_to_device", "resolve_device", "seed_everything"]

"""Small shared helpers: seeding, logging set-up, run folders. Import no other cxrfm layer."""

from cxrfm.utils.runtime import configure_logging, make_run_dir, seed_everything

__all__ = ["configure_logging", "make_run_dir", "seed_everything"]

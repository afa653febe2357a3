"""Small shared helpers: atomic file writes, seeding, environment facts."""

from sslguard.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, save_npy
from sslguard.utils.seed import seed_everything

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "save_npy",
    "seed_everything",
]

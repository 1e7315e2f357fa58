"""Checkpoints: ``io`` writes and reads files safely, ``schema`` names what they hold,
``resume`` picks the one a resumed run continues from."""

from stagetrain.checkpoint.io import (
    FORMAT,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    atomic_write,
    digest,
    estimated_size,
    load,
    preflight_disk,
    save,
    temp_prefix,
    write_error,
)
from stagetrain.checkpoint.schema import rng_state, set_rng_state, snapshot

__all__ = ["FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "atomic_write", "digest", "estimated_size", "load",
           "preflight_disk", "rng_state", "save", "set_rng_state", "snapshot", "temp_prefix",
           "write_error"]

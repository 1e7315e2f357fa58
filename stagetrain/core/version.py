"""stagetrain's version, below everything that records or prints it (run.json, --version)."""

__version__ = "0.1.0"

"""Hydra configs shipped with the package (the top-level conf/ folder of the repository)."""

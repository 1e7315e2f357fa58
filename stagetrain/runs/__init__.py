"""The run layer: one run from its typed config to its run directory (runner, resume, run directory and lock, preflight, dry run, tuning, the scratch control, progress sinks)."""

"""The application wing: the console scripts' entry points, the Python API, Hydra's callbacks and writes, and the command-line checks (the only modules that parse argv)."""

"""``model=resnet``: a model-family plug (see README.md beside this file and plugs.py)."""

from stagetrain.core.plugs import exports

__getattr__ = exports(__name__)  # Config, validate, spec and the hooks, from config.py

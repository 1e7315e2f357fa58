"""``dataset=text_classification``: a dataset plug (see README.md beside this file and plugs.py)."""

from stagetrain.core.plugs import exports

__getattr__ = exports(__name__, "reader")  # Config, validate, meta, ... from config.py; bundle from reader.py

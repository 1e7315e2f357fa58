"""``model=hf``: a Hugging Face transformers model as a model-family plug (README.md beside
this file). Everything comes from the torch-free ``config`` module."""

from stagetrain.families.hf.config import *  # noqa: F403
from stagetrain.families.hf.config import __all__  # noqa: F401

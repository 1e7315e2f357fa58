"""stagetrain: staged neural-network training (layer-wise, growth, fine-tuning) vs scratch."""

__version__ = "0.1.0"

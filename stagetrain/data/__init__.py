"""Data: what every dataset plug (``stagetrain/datasets/``) reads into, and the shared readers.

A dataset gives the engine a ``DataBundle`` of splits (``bundle.py``); ``finish.py``
finishes a loader's (train, test) pair the same way for every dataset; ``stream.py``
reads a split lazily through DataLoader workers; ``images.py`` (torchvision's raw files,
IDX), ``imagefolder.py`` (your own images) and ``text.py`` (token streams and padded
texts) are the readers the plugs call. Which dataset is which lives in its plug.
"""

from stagetrain.data.bundle import DataBundle, LazyInputs, Split, epoch_permutation

__all__ = ["DataBundle", "LazyInputs", "Split", "epoch_permutation"]

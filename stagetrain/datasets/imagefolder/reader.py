"""``dataset=imagefolder``: the shared folder reader (``data/imagefolder.py``)."""

from stagetrain.data.imagefolder import load_folder as load
from stagetrain.data.imagefolder import stream_folder as stream

__all__ = ["load", "stream"]

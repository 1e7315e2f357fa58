"""``dataset=mnist``: options, checks and sizes without reading the files (torch-free)."""

from stagetrain.datasets.rawimages import Config, plug_of  # noqa: F401 - Config: the plug's schema

RAW = {
    "name": "mnist", "folder": "MNIST", "tv_class": "MNIST", "shape": (1, 28, 28), "classes": 10, "n_train": 60000,
    "layout": "idx",
    "offline": 'copy them there from a machine that has them (e.g. its ~/.cache/stagetrain/MNIST/raw/)',
}
STREAMABLE = True  # stream(): images read lazily from the IDX file

meta, validate = plug_of(RAW)  # sizes from RAW; no options beyond every dataset's

"""``dataset=cifar10``: options, checks and sizes without reading the files (torch-free)."""

from stagetrain.datasets.rawimages import Config, plug_of  # noqa: F401 - Config: the plug's schema

RAW = {
    "name": "cifar10", "folder": "cifar-10-batches-py", "tv_class": "CIFAR10", "shape": (3, 32, 32), "classes": 10, "n_train": 50000,
    "layout": "cifar",
    "offline": 'copy the extracted archive from a machine that has it',
}

meta, validate = plug_of(RAW)  # sizes from RAW; no options beyond every dataset's

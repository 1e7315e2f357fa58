"""``dataset=fashion_mnist``: options, checks and sizes without reading the files (torch-free)."""

from stagetrain.datasets.rawimages import Config, meta_of, no_options  # noqa: F401 - Config: the plug's schema

RAW = {
    "name": "fashion_mnist", "folder": "FashionMNIST", "tv_class": "FashionMNIST", "shape": (1, 28, 28), "classes": 10, "n_train": 60000,
    "layout": "idx",
    "offline": 'on Debian/Ubuntu, `apt install dataset-fashion-mnist` installs them gzipped in /usr/share/datasets/fashion-mnist/; gunzip each into {folder}/ (README, Data)',
}
STREAMABLE = True  # stream(): images read lazily from the IDX file


def meta(ds: object) -> tuple:
    return meta_of(RAW, ds)


validate = no_options

"""``dataset=fashion_mnist``: options, checks and sizes without reading the files (torch-free).
Fashion-MNIST is a drop-in for MNIST (Xiao et al., 2017): the same shapes, sizes and IDX files,
in another folder."""

from stagetrain.datasets.mnist.config import RAW as MNIST
from stagetrain.datasets.mnist.config import STREAMABLE  # noqa: F401 - stream(): images read lazily from the IDX file
from stagetrain.datasets.rawimages import Config, plug_of  # noqa: F401 - Config: the plug's schema

RAW = {
    **MNIST, "name": "fashion_mnist", "folder": "FashionMNIST", "tv_class": "FashionMNIST",
    "offline": 'on Debian/Ubuntu, `apt install dataset-fashion-mnist` installs them gzipped in /usr/share/datasets/fashion-mnist/; gunzip each into {folder}/ (README, Data)',
}
meta, validate = plug_of(RAW)  # sizes from RAW; no options beyond every dataset's

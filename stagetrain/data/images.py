"""The built-in image datasets: digits, MNIST, Fashion-MNIST, CIFAR-10, synthetic.

Each is read once (torchvision's classes read the real files and check them) into a
(train, test, scale) triple: uint8 (or float) tensors and integer labels, the official
test split kept for final metrics. ``stagetrain.data.load_data`` finishes the bundle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from stagetrain import userfile
from stagetrain.data.bundle import Split
from stagetrain.errors import StagetrainError

log = logging.getLogger("stagetrain")
RAW_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}

# (input shape, classes, official training-set size) without reading the files: for dry runs
META = {
    "digits": ((1, 8, 8), 10, 1437),
    "mnist": ((1, 28, 28), 10, 60000),
    "fashion_mnist": ((1, 28, 28), 10, 60000),
    "cifar10": ((3, 32, 32), 10, 50000),
}


def image_meta(cfg: Any) -> tuple[tuple[int, ...], int, int]:
    """(input shape, classes, official training samples) without reading the files."""
    if cfg.name == "synthetic":
        return tuple(cfg.shape), int(cfg.num_classes), int(cfg.n_train)
    return META[cfg.name]


def load_images(cfg: Any, seed: int) -> tuple[Split, Split, float]:
    """(train, test, scale) of a built-in image dataset."""
    if cfg.name == "digits":
        return _load_digits()
    if cfg.name == "synthetic":
        return _make_synthetic(cfg, seed)
    return _load_torchvision(cfg.name, cfg.root, cfg.download)


def _load_digits() -> tuple[Split, Split, float]:
    """scikit-learn's 8x8 digits, read from the CSV inside its package without importing it
    (the same values as ``sklearn.datasets.load_digits``), split by the stored indices."""
    import gzip
    import importlib.util

    import numpy as np

    from stagetrain.digits_split import TEST, TRAIN

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise StagetrainError("dataset=digits reads scikit-learn's bundled digits; install it: pip install scikit-learn.")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    x = torch.tensor(table[:, :-1].reshape(-1, 1, 8, 8), dtype=torch.uint8)  # N x 1 x 8 x 8, values 0..16
    y = torch.tensor(table[:, -1], dtype=torch.long)
    # digits has no official test split: a fixed, stratified 20% is held out.
    tr, te = (torch.tensor([int(i) for i in idx.split()]) for idx in (TRAIN, TEST))
    return Split(x[tr], y[tr]), Split(x[te], y[te]), 16.0


IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
OFFLINE_SOURCES = {  # where to get the files without torchvision's download
    "mnist": "copy them there from a machine that has them (e.g. its ~/.cache/stagetrain/MNIST/raw/)",
    "fashion_mnist": ("on Debian/Ubuntu, `apt install dataset-fashion-mnist` installs them gzipped in "
                      "/usr/share/datasets/fashion-mnist/; gunzip each into {folder}/ (README, Data)"),
}


def missing_data_message(name: str, root: Path) -> str:
    """What to do when the dataset files are not under ``root``: where they go, how to get
    them without a network, how to point stagetrain at another folder, how to download."""
    folder, names = _raw_files(name, root)
    if name == "cifar10":
        where = f"the extracted cifar-10-python.tar.gz, i.e. {folder}/data_batch_1 ... test_batch"
        offline = "copy the extracted archive from a machine that has it"
    else:
        where = f"the four uncompressed IDX files in {folder}/ ({', '.join(IDX_FILES)})"
        offline = OFFLINE_SOURCES[name].format(folder=folder)
    missing = [f for f in names if not os.path.lexists(folder / f)]
    if missing and len(missing) < len(names):  # name what is missing, not the whole set
        gz = [f for f in missing if os.path.lexists(folder / f"{f}.gz")]
        found = (f"the files were not found: {folder}/ lacks {', '.join(missing)} (the other {len(names) - len(missing)} files are there"
                 + (f"; gunzip {', '.join(g + '.gz' for g in gz)}" if gz else "") + ")")
    else:
        found = f"the files were not found (or failed torchvision's checks) under {root}"
    return (f"dataset={name}: {found}. "
            f"stagetrain reads {where}. Offline: {offline}. Data somewhere else: set dataset.root=<folder> "
            f"or the STAGETRAIN_DATA environment variable to the folder that holds {RAW_FOLDERS[name]}/. "
            "With a network: add dataset.download=true to download and check them.")


CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _raw_files(name: str, root: Path) -> tuple[Path, list[str]]:
    """The folder torchvision reads ``name``'s files from under ``root``, and their names."""
    if name == "cifar10":
        return root / RAW_FOLDERS[name], CIFAR_FILES
    return root / RAW_FOLDERS[name] / "raw", IDX_FILES


def _check_files(name: str, root: Path) -> None:
    """The dataset's files that exist pass the file gate before torchvision opens them by
    name (a FIFO would block it, a sparse or huge file exhaust memory); missing ones are
    left to torchvision's check, which ``missing_data_message`` explains."""
    folder, names = _raw_files(name, root)
    for file in names:
        if os.path.lexists(folder / file):
            userfile.check_file(folder / file, f"dataset={name}", "data")


def _load_torchvision(name: str, root: str, download: bool) -> tuple[Split, Split, float]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    root_path = Path(os.path.expanduser(root))
    _check_files(name, root_path)
    try:
        parts = [cls(str(root_path), train=train, download=download) for train in (True, False)]
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted", or a short file
        if "not found" in str(e).lower():
            raise StagetrainError(missing_data_message(name, root_path)) from None
        raise StagetrainError(unreadable_message(name, root_path, e)) from None
    except (AssertionError, ValueError, TypeError, IndexError, OSError, EOFError, KeyError) as e:
        raise StagetrainError(unreadable_message(name, root_path, e)) from None
    splits = []
    for train, part in zip((True, False), parts, strict=True):
        x = torch.as_tensor(part.data)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # CIFAR is N x H x W x C
        split = Split(x.contiguous(), torch.as_tensor(part.targets, dtype=torch.long))
        check_split(name, "train" if train else "test", split, root_path)
        splits.append(split)
    return splits[0], splits[1], 255.0


class IdxReader:
    """Images of an uncompressed IDX file, read one at a time through a memory map (opened
    lazily, so the reader pickles into DataLoader workers as a path)."""

    def __init__(self, path: Path, n: int, shape: tuple[int, ...]):
        self.path, self.n, self.sample_shape = path, n, shape
        self._map = None

    def __len__(self) -> int:
        return self.n

    def _images(self) -> Any:
        if self._map is None:
            import numpy as np

            with userfile.open_file(self.path, "dataset.root", "data") as f:  # the map keeps its own reference
                self._map = np.memmap(f, np.uint8, "r", offset=16, shape=(self.n, *self.sample_shape))
        return self._map

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._images()[i].copy())

    def batch(self, rows: list[int]) -> torch.Tensor:
        """Samples ``rows`` in one read (a fancy index copies them out of the map)."""
        return torch.from_numpy(self._images()[rows]) if rows else torch.empty(0, *self.sample_shape, dtype=torch.uint8)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}


def stream_images(cfg: Any, seed: int) -> tuple[Split, Split, float]:
    """(train, test, scale) of MNIST / Fashion-MNIST with lazily read inputs (labels in memory)."""
    from stagetrain.data.bundle import LazyInputs

    root = Path(os.path.expanduser(cfg.root))
    raw = root / RAW_FOLDERS[cfg.name] / "raw"
    splits = []
    for part in ("train", "t10k"):
        images, labels = raw / f"{part}-images-idx3-ubyte", raw / f"{part}-labels-idx1-ubyte"
        if not os.path.lexists(images) or not os.path.lexists(labels):
            raise StagetrainError(missing_data_message(cfg.name, root))
        what = f"dataset={cfg.name}"
        y = torch.frombuffer(bytearray(userfile.read_bytes(labels, what, "data")[8:]), dtype=torch.uint8).long()
        with userfile.open_file(images, what, "data") as f:
            size = os.fstat(f.fileno()).st_size
        if size != 16 + len(y) * 28 * 28:
            raise StagetrainError(f"dataset={cfg.name}: {images} does not hold {len(y)} 28x28 images, as its "
                                  f"labels file says; replace both files. {missing_data_message(cfg.name, root)}")
        splits.append(Split(LazyInputs(IdxReader(images, len(y), (1, 28, 28)), torch.arange(len(y))), y))
    return splits[0], splits[1], 255.0


def unreadable_message(name: str, root: Path, e: BaseException) -> str:
    cause = str(e).splitlines()[0][:160] if str(e) else "a wrong magic number (not an IDX file of this kind)"
    return (f"dataset={name}: the files under {root / RAW_FOLDERS[name]} exist but could not be read ({cause}). "
            "A file is truncated, is not an IDX file of the expected kind (images: magic 0x00000803, labels: "
            "0x00000801), or the image and label files are swapped. Replace them with the official files, or "
            "delete them and add dataset.download=true.")


def check_split(name: str, which: str, split: Split, root: Path) -> None:
    """Images and labels of one split agree: as many of each, labels 0..classes-1, the
    dataset's image shape; a constant split (all zeros, say) is worth a warning."""
    shape, classes, _ = META[name]
    where = f"dataset={name} ({which} split, under {root / RAW_FOLDERS[name]})"
    if len(split.x) != len(split.y):
        raise StagetrainError(f"{where}: {len(split.x)} images but {len(split.y)} labels; the counts must agree. "
                              "A file is truncated or belongs to another dataset; replace it with the official one.")
    if len(split.y) == 0:
        raise StagetrainError(f"{where}: the split is empty; replace the files with the official ones.")
    if tuple(split.x.shape[1:]) != tuple(shape):
        raise StagetrainError(f"{where}: images of shape {tuple(split.x.shape[1:])}, but {name} has {shape}; "
                              "the files belong to another dataset.")
    low, high = int(split.y.min()), int(split.y.max())
    if low < 0 or high >= classes:
        raise StagetrainError(f"{where}: labels range {low}..{high}, but {name} has {classes} classes "
                              f"(labels 0..{classes - 1}); the label file is damaged or belongs to another dataset.")
    if bool((split.x == split.x.flatten()[0]).all()):
        log.warning("%s: every image is the same constant value (%s); results on it mean nothing. "
                    "Check the image file.", where, split.x.flatten()[0].item())


def _make_synthetic(cfg: Any, seed: int) -> tuple[Split, Split, float]:
    """Gaussian class prototypes plus isotropic noise; a smooth prototype makes images."""
    g = torch.Generator().manual_seed(1_000_003 + seed)
    shape = tuple(cfg.shape)
    protos = torch.randn(cfg.num_classes, *shape, generator=g)
    if len(shape) == 3:  # smooth the prototypes so neighbouring pixels correlate, like images
        protos = torch.nn.functional.avg_pool2d(protos, 3, stride=1, padding=1)
        protos = protos / protos.flatten(1).std(1).view(-1, 1, 1, 1)

    def draw(n: int) -> Split:
        y = torch.randint(cfg.num_classes, (n,), generator=g)
        x = protos[y] + cfg.noise * torch.randn(n, *shape, generator=g)
        return Split(x, y)

    return draw(cfg.n_train), draw(cfg.n_test), 1.0



"""In-memory datasets as tensors on the training device.

Each dataset is read once (torchvision's classes read the real files and check them),
split into train / validation (seeded, carved from the training set) / test (the official
test split, used for final metrics only), and kept on the device. A batch is a slice of a
seeded permutation; normalisation runs batched on the device. No DataLoader, no
per-sample Python work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stagetrain.errors import StagetrainError

RAW_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}


@dataclass
class Split:
    """Inputs (uint8 or float, N x C x H x W or N x D) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass
class DataBundle:
    """Everything a run trains and evaluates on, already on the device."""

    name: str
    train: Split
    val: Split
    test: Split
    labeled: torch.Tensor  # indices into train whose labels supervised stages may use
    in_shape: tuple[int, ...]
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    scale: float  # raw value that maps to 1.0 (255 for uint8 images, 16 for digits)

    def normalize(self, x: torch.Tensor, mode: str = "standardize") -> torch.Tensor:
        """Raw batch -> float32 scaled to [0, 1], then (``standardize``) per channel."""
        x = x.float() / self.scale
        return (x - self.mean) / self.std if mode == "standardize" else x.clamp(0, 1)

    def to(self, device: torch.device) -> DataBundle:
        move = lambda s: Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return DataBundle(
            self.name, move(self.train), move(self.val), move(self.test),
            self.labeled.to(device), self.in_shape, self.num_classes,
            self.mean.to(device), self.std.to(device), self.scale,
        )


# (input shape, classes, official training-set size) without reading the files: for dry runs
META = {
    "digits": ((1, 8, 8), 10, 1437),
    "mnist": ((1, 28, 28), 10, 60000),
    "fashion_mnist": ((1, 28, 28), 10, 60000),
    "cifar10": ((3, 32, 32), 10, 50000),
}


def dataset_meta(cfg: Any) -> tuple[tuple[int, ...], int, int, int]:
    """(input shape, classes, training samples, labelled samples) that ``load_data`` will give."""
    if cfg.name == "synthetic":
        shape, classes, n = tuple(cfg.shape), int(cfg.num_classes), int(cfg.n_train)
    else:
        shape, classes, n = META[cfg.name]
    if cfg.classes is not None:
        n = round(n * len(cfg.classes) / classes)
        classes = len(cfg.classes)
    n = n - max(classes, round(cfg.val_fraction * n))
    if cfg.max_train is not None:
        n = min(n, cfg.max_train)
    return shape, classes, n, max(classes, round(n * cfg.labeled_fraction))


def epoch_permutation(n: int, seed: int, stage: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, stage, epoch).

    Deriving the order instead of carrying a generator forward means a resumed run sees
    exactly the batches the interrupted one would have seen.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + stage) * 10_007 + epoch)
    return torch.randperm(n, generator=g).to(device)


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
    folder = root / RAW_FOLDERS[name]
    if name == "cifar10":
        where = f"the extracted cifar-10-python.tar.gz, i.e. {folder}/data_batch_1 ... test_batch"
        offline = "copy the extracted archive from a machine that has it"
    else:
        folder = folder / "raw"
        where = f"the four uncompressed IDX files in {folder}/ ({', '.join(IDX_FILES)})"
        offline = OFFLINE_SOURCES[name].format(folder=folder)
    return (f"dataset={name}: the files were not found (or failed torchvision's checks) under {root}. "
            f"stagetrain reads {where}. Offline: {offline}. Data somewhere else: set dataset.root=<folder> "
            f"or the STAGETRAIN_DATA environment variable to the folder that holds {RAW_FOLDERS[name]}/. "
            "With a network: add dataset.download=true to download and check them.")


def _load_torchvision(name: str, root: str, download: bool) -> tuple[Split, Split, float]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    root_path = Path(os.path.expanduser(root))
    try:
        parts = [cls(str(root_path), train=train, download=download) for train in (True, False)]
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        raise StagetrainError(missing_data_message(name, root_path)) from None
    splits = []
    for part in parts:
        x = torch.as_tensor(part.data)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # CIFAR is N x H x W x C
        splits.append(Split(x.contiguous(), torch.as_tensor(part.targets, dtype=torch.long)))
    return splits[0], splits[1], 255.0


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


def _select_classes(split: Split, classes: list[int]) -> Split:
    """Keep only the given classes, relabelled 0..k-1 in the order given."""
    lookup = torch.full((int(split.y.max()) + 1,), -1, dtype=torch.long)
    for new, old in enumerate(classes):
        if old < len(lookup):
            lookup[old] = new
    keep = lookup[split.y] >= 0
    return Split(split.x[keep], lookup[split.y[keep]])


def _stratified_subset(y: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A seeded subset of indices with ``fraction`` of each class (at least one per class)."""
    picked = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.append(idx[: max(1, round(fraction * len(idx)))])
    return torch.sort(torch.cat(picked)).values


def load_data(cfg: Any, seed: int) -> DataBundle:
    """Read the dataset named by ``cfg`` (the ``dataset`` node) and split it, on the CPU."""
    name = cfg.name
    if name == "digits":
        train, test, scale = _load_digits()
    elif name == "synthetic":
        train, test, scale = _make_synthetic(cfg, seed)
    else:
        train, test, scale = _load_torchvision(name, cfg.root, cfg.download)

    if cfg.classes is not None:
        classes = list(cfg.classes)
        present = set(torch.unique(train.y).tolist())
        missing = [c for c in classes if c not in present]
        if missing:
            raise StagetrainError(
                f"dataset.classes={classes} names classes {missing} that dataset={name} does not have "
                f"(it has {min(present)}..{max(present)})."
            )
        train, test = _select_classes(train, classes), _select_classes(test, classes)
    num_classes = len(cfg.classes) if cfg.classes is not None else int(train.y.max()) + 1

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    n_val = max(num_classes, round(cfg.val_fraction * len(train)))
    val, train = train.subset(order[:n_val]), train.subset(order[n_val:])
    if cfg.max_train is not None and cfg.max_train < len(train):
        train = train.subset(torch.arange(cfg.max_train))
    if cfg.labeled_fraction < 1.0:
        labeled = _stratified_subset(train.y, cfg.labeled_fraction, g)
    else:
        labeled = torch.arange(len(train))

    xf = train.x.float() / scale
    dims = [0] + list(range(2, xf.ndim))  # per channel for images, per feature otherwise
    if xf.ndim == 4:
        mean, std = xf.mean(dims, keepdim=True)[0], xf.std(dims, keepdim=True)[0]
    else:
        mean, std = xf.mean(0), xf.std(0)
    std = std.clamp_min(1e-3)
    return DataBundle(
        name, train, val, test, labeled, tuple(train.x.shape[1:]), num_classes, mean, std, scale
    )

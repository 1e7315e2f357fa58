"""The reader of torchvision's image datasets, for the plugs that describe one (``RawImages``).

Each is read once (torchvision's classes read the real files and check them) into a
(train, test, scale) triple: uint8 tensors and integer labels, the official test split kept
for final metrics; IDX files can also be read lazily (``stream_idx``, ``IdxReader``).
``stagetrain.datasets.load_data`` finishes the bundle.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError
from stagetrain.data.bundle import Split

log = logging.getLogger("stagetrain")


@dataclass(frozen=True)
class RawImages:
    """What a torchvision image dataset's plug tells the readers: its name, the folder under
    ``dataset.root`` torchvision reads (``layout`` idx: ``<folder>/raw/`` IDX files; cifar:
    the extracted python batches), torchvision's class, the image shape, classes, official
    training-set size, and where to get the files offline (``{folder}`` is filled in)."""

    name: str
    folder: str
    tv_class: str
    shape: tuple[int, ...]
    classes: int
    n_train: int
    offline: str
    layout: str = "idx"


IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]


def missing_data_message(raw: RawImages, root: Path) -> str:
    """What to do when the dataset files are not under ``root``: where they go, how to get
    them without a network, how to point stagetrain at another folder, how to download."""
    folder, names = _raw_files(raw, root)
    name = raw.name
    if raw.layout == "cifar":
        where = f"the extracted python archive, i.e. {folder}/{names[0]} ... {names[-2]}"
    else:
        where = f"the four uncompressed IDX files in {folder}/ ({', '.join(IDX_FILES)})"
    offline = raw.offline.format(folder=folder)
    missing = [f for f in names if not os.path.lexists(folder / f)]
    if missing and len(missing) < len(names):  # name what is missing, not the whole set
        gz = [f for f in missing if os.path.lexists(folder / f"{f}.gz")]
        found = (f"the files were not found: {folder}/ lacks {', '.join(missing)} (the other {len(names) - len(missing)} files are there"
                 + (f"; gunzip {', '.join(g + '.gz' for g in gz)}" if gz else "") + ")")
    else:
        found = f"the files were not found (or failed torchvision's checks) under {root}"
    return (f"dataset={name}: {found}. "
            f"stagetrain reads {where}. Offline: {offline}. Data somewhere else: set dataset.root=<folder> "
            f"or the STAGETRAIN_DATA environment variable to the folder that holds {raw.folder}/. "
            "With a network: add dataset.download=true to download and check them.")


CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _raw_files(raw: RawImages, root: Path) -> tuple[Path, list[str]]:
    """The folder torchvision reads the dataset's files from under ``root``, and their names."""
    if raw.layout == "cifar":
        return root / raw.folder, CIFAR_FILES
    return root / raw.folder / "raw", IDX_FILES


def _check_files(raw: RawImages, root: Path) -> None:
    """The dataset's files that exist pass the file gate before torchvision opens them by
    name (a FIFO would block it, a sparse or huge file exhaust memory); missing ones are
    left to torchvision's check, which ``missing_data_message`` explains."""
    folder, names = _raw_files(raw, root)
    for file in names:
        if os.path.lexists(folder / file):
            userfile.check_file(folder / file, f"dataset={raw.name}", "data")


def load_torchvision(cfg: Any, raw: RawImages) -> tuple[Split, Split, float]:
    """(train, test, scale) of a torchvision dataset, read by torchvision from ``dataset.root``."""
    from torchvision import datasets

    cls = getattr(datasets, raw.tv_class)  # a name from the plug's code, never from a file
    root_path, download = Path(os.path.expanduser(cfg.root)), bool(cfg.download)
    _check_files(raw, root_path)
    try:
        parts = [cls(str(root_path), train=train, download=download) for train in (True, False)]
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted", or a short file
        if "not found" in str(e).lower():
            raise StagetrainError(missing_data_message(raw, root_path)) from None
        raise StagetrainError(unreadable_message(raw, root_path, e)) from None
    except (AssertionError, ValueError, TypeError, IndexError, OSError, EOFError, KeyError) as e:
        raise StagetrainError(unreadable_message(raw, root_path, e)) from None
    splits = []
    for train, part in zip((True, False), parts, strict=True):
        x = torch.as_tensor(part.data)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # CIFAR is N x H x W x C
        split = Split(x.contiguous(), torch.as_tensor(part.targets, dtype=torch.long))
        check_split(raw, "train" if train else "test", split, root_path)
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


def stream_idx(cfg: Any, raw_images: RawImages) -> tuple[Split, Split, float]:
    """(train, test, scale) of an IDX dataset with lazily read inputs (labels in memory)."""
    from stagetrain.data.bundle import LazyInputs

    root = Path(os.path.expanduser(cfg.root))
    raw = root / raw_images.folder / "raw"
    size = raw_images.shape
    splits = []
    for part in ("train", "t10k"):
        images, labels = raw / f"{part}-images-idx3-ubyte", raw / f"{part}-labels-idx1-ubyte"
        if not os.path.lexists(images) or not os.path.lexists(labels):
            raise StagetrainError(missing_data_message(raw_images, root))
        what = f"dataset={cfg.name}"
        y = torch.frombuffer(bytearray(userfile.read_bytes(labels, what, "data")[8:]), dtype=torch.uint8).long()
        with userfile.open_file(images, what, "data") as f:
            nbytes = os.fstat(f.fileno()).st_size
        if nbytes != 16 + len(y) * math.prod(size):
            raise StagetrainError(f"dataset={cfg.name}: {images} does not hold {len(y)} {size[-2]}x{size[-1]} images, "
                                  f"as its labels file says; replace both files. {missing_data_message(raw_images, root)}")
        splits.append(Split(LazyInputs(IdxReader(images, len(y), tuple(size)), torch.arange(len(y))), y))
    return splits[0], splits[1], 255.0


def unreadable_message(raw: RawImages, root: Path, e: BaseException) -> str:
    cause = str(e).splitlines()[0][:160] if str(e) else "a wrong magic number (not an IDX file of this kind)"
    return (f"dataset={raw.name}: the files under {root / raw.folder} exist but could not be read ({cause}). "
            "A file is truncated, is not an IDX file of the expected kind (images: magic 0x00000803, labels: "
            "0x00000801), or the image and label files are swapped. Replace them with the official files, or "
            "delete them and add dataset.download=true.")


def check_split(raw: RawImages, which: str, split: Split, root: Path) -> None:
    """Images and labels of one split agree: as many of each, labels 0..classes-1, the
    dataset's image shape; a constant split (all zeros, say) is worth a warning."""
    name, shape, classes = raw.name, raw.shape, raw.classes
    where = f"dataset={name} ({which} split, under {root / raw.folder})"
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

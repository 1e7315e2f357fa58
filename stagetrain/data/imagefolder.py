"""``dataset=imagefolder``: your own images, one folder per class, read by torchvision.

``dataset.root`` holds ``train/<class>/*.png|jpg...`` and optionally ``val/`` and ``test/``
with the same class folders (torchvision ``ImageFolder`` layout; classes are numbered in
sorted order). Without ``val/`` the validation split is carved from train with the seed,
as for every dataset; without ``test/`` a fixed 10% of train (the same for every seed) is
held out as the test split. Each image is decoded, converted to ``dataset.channels`` and
resized to ``dataset.image_size`` square, giving uint8 C x H x W -- when read (streamed)
or once at the start (in memory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from stagetrain.data.bundle import LazyInputs, Split
from stagetrain.errors import StagetrainError

TEST_FRACTION = 0.1  # held out as the test split when the folder has no test/


class FolderReader:
    """The images of a list of files, decoded on demand to uint8 C x H x W."""

    def __init__(self, paths: list[str], channels: int, size: int):
        self.paths, self.channels, self.size = paths, channels, size
        self.sample_shape = (channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if img.size != (self.size, self.size):
                    img = img.resize((self.size, self.size), Image.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise StagetrainError(f"dataset=imagefolder: cannot read {path} as an image ({e}). Remove or "
                                  "replace the file, then run again.") from None
        return data.view(self.size, self.size, self.channels).permute(2, 0, 1).contiguous()


def _folder(cfg: Any) -> Path:
    root = Path(os.path.expanduser(str(cfg.root)))
    if not (root / "train").is_dir():
        raise StagetrainError(f"dataset=imagefolder: {root / 'train'} is not a folder. Set dataset.root=<folder> "
                              "to a folder that holds train/<class name>/<images> (and optionally val/ and test/ "
                              f"alike); it is {root}.")
    return root


def _scan(folder: Path, classes: dict[str, int] | None) -> tuple[list[str], list[int], dict[str, int]]:
    """(files, labels, class -> index) of one split folder, with clear errors for an empty
    folder, a class folder without images, or a class the training folder lacks."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not names:
        raise StagetrainError(f"dataset=imagefolder: {folder} has no class folders; put each class's images "
                              f"in {folder}/<class name>/ (extensions {', '.join(IMG_EXTENSIONS)}).")
    found = find_classes(str(folder))[1]
    if classes is not None and set(found) - set(classes):
        raise StagetrainError(f"dataset=imagefolder: {folder} has classes {sorted(set(found) - set(classes))} "
                              f"that train/ does not have ({', '.join(classes)}).")
    mapping = classes or found
    samples = make_dataset(str(folder), {k: v for k, v in mapping.items() if k in found},
                           extensions=IMG_EXTENSIONS, allow_empty=True)
    counts = {c for _, c in samples}
    empty = [name for name in found if mapping[name] not in counts]
    if empty:
        raise StagetrainError(f"dataset=imagefolder: the class folder(s) {', '.join(str(folder / e) for e in empty)} "
                              f"hold no images (extensions {', '.join(IMG_EXTENSIONS)}). Add images or remove the folder.")
    return [p for p, _ in samples], [c for _, c in samples], mapping


def _held_out(n: int) -> torch.Tensor:
    """The fixed sample numbers of train held out as test when there is no test/."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(20_240_101))[: max(1, round(TEST_FRACTION * n))]


def folder_meta(cfg: Any) -> tuple[tuple[int, ...], int, int, bool]:
    """(shape, classes, training samples, whether val/ exists), from the file names alone."""
    root = _folder(cfg)
    files, _, classes = _scan(root / "train", None)
    n = len(files) - (0 if (root / "test").is_dir() else len(_held_out(len(files))))
    return (int(cfg.channels), int(cfg.image_size), int(cfg.image_size)), len(classes), n, (root / "val").is_dir()


def stream_folder(cfg: Any, seed: int) -> tuple[Split, Split, float, Split | None, dict[str, Any]]:
    """(train, test, scale, val or None, info) with lazily read images."""
    root = _folder(cfg)
    files, labels, classes = _scan(root / "train", None)

    def split(paths: list[str], ys: list[int]) -> Split:
        reader = FolderReader(paths, int(cfg.channels), int(cfg.image_size))
        x = LazyInputs(reader, torch.arange(len(paths)), workers=int(cfg.workers))
        return Split(x, torch.tensor(ys, dtype=torch.long))

    train = split(files, labels)
    if (root / "test").is_dir():
        test = split(*_scan(root / "test", classes)[:2])
        test_from = "test/"
    else:
        held = _held_out(len(train))
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[held] = False
        train, test = train.subset(torch.nonzero(keep).flatten()), train.subset(held)
        test_from = f"a fixed {TEST_FRACTION:.0%} of train/ (no test/ folder)"
    val = split(*_scan(root / "val", classes)[:2]) if (root / "val").is_dir() else None
    info = {"root": str(root), "class_to_idx": classes, "test_split": test_from,
            "val_split": "val/" if val is not None else "carved from train/ (dataset.val_fraction)"}
    return train, test, 255.0, val, info


def load_folder(cfg: Any, seed: int) -> tuple[Split, Split, float, Split | None, dict[str, Any]]:
    """The same splits, every image decoded once into memory."""
    from stagetrain.data.stream import materialize

    train, test, scale, val, info = stream_folder(cfg, seed)
    whole = lambda s: Split(materialize(s.x), s.y)  # noqa: E731
    return whole(train), whole(test), scale, None if val is None else whole(val), info

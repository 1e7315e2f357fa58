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
import re
from pathlib import Path
from typing import Any

import torch

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError
from stagetrain.data.bundle import LazyInputs, Split

TEST_FRACTION = 0.1  # held out as the test split when the folder has no test/
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class FolderReader:
    """The images of a list of files, decoded on demand to uint8 C x H x W."""

    def __init__(self, paths: list[str], channels: int, size: int):
        self.paths, self.channels, self.size = paths, channels, size
        self.sample_shape = (channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        data = decode(self.paths[i], self.channels, self.size)
        return data.view(self.size, self.size, self.channels).permute(2, 0, 1).contiguous()


def decode(path: str, channels: int, size: int) -> torch.Tensor:
    """The pixels of one image (opened through the file gate, kind "image"), converted and
    resized: H*W*C uint8. A file that is not a readable image, is truncated, or declares more
    pixels than Pillow's decompression-bomb limit is refused naming it."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    with userfile.open_file(path, "dataset.root", "image") as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f) as img:
                    img = img.convert("L" if channels == 1 else "RGB")
                    if img.size != (size, size):
                        img = img.resize((size, size), Image.BILINEAR)
                    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise StagetrainError(_bomb_message(path, e)) from None
        except UnidentifiedImageError:
            raise StagetrainError(f"dataset=imagefolder: cannot read {path} as an image (not an image format "
                                  "Pillow reads: PNG, JPEG, BMP, TIFF, WebP...). Remove or replace the file, then "
                                  "run again.") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            cause = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if isinstance(e, EOFError) and "truncated" not in cause:
                cause += "; the file is truncated"
            raise StagetrainError(f"dataset=imagefolder: cannot read {path} as an image ({cause}). Remove or "
                                  "replace the file, then run again.") from None


def _bomb_message(path: str, e: BaseException) -> str:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(e))
    pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
    return (f"dataset=imagefolder: {path} declares {pixels}, more than Pillow's decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels; it was not decoded (a small file can expand to gigabytes). "
            "Resize the image, or remove it.")


def _folder(cfg: Any) -> Path:
    root = Path(os.path.expanduser(str(cfg.root)))
    if not (root / "train").is_dir():
        raise StagetrainError(f"dataset=imagefolder: {root / 'train'} is not a folder. Set dataset.root=<folder> "
                              "to a folder that holds train/<class name>/<images> (and optionally val/ and test/ "
                              f"alike); it is {root}.")
    return root


def _scan(folder: Path, classes: dict[str, int] | None) -> tuple[list[str], list[int], dict[str, int]]:
    """(files, labels, class -> index) of one split folder, with clear errors for an empty
    folder, a class folder without images, or a class the training folder lacks. Each class
    folder is walked through the file gate: every real image once, a link loop named."""
    names = [p.name for p in userfile.listing(folder, "dataset.root")[0]] if folder.is_dir() else []
    if not names:
        raise StagetrainError(f"dataset=imagefolder: {folder} has no class folders; put each class's images "
                              f"in {folder}/<class name>/ (extensions {', '.join(IMG_EXTENSIONS)}).")
    if classes is not None and set(names) - set(classes):
        raise StagetrainError(f"dataset=imagefolder: {folder} has classes {sorted(set(names) - set(classes))} "
                              f"that train/ does not have ({', '.join(classes)}).")
    mapping = classes or {name: i for i, name in enumerate(names)}
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for name in names:
        walked = userfile.walk(folder / name, "dataset.root", inside=(folder,))
        found = [p for p in walked if p.name.lower().endswith(IMG_EXTENSIONS)]
        images = [str(p) for p in sorted(found, key=lambda p: (str(p.parent), p.name))]  # torchvision's order
        empty += [] if images else [name]
        files += images
        labels += [mapping[name]] * len(images)
    if empty:
        raise StagetrainError(f"dataset=imagefolder: the class folder(s) {', '.join(str(folder / e) for e in empty)} "
                              f"hold no images (extensions {', '.join(IMG_EXTENSIONS)}). Add images or remove the folder.")
    return files, labels, mapping


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

"""Datasets: every source gives the engine a ``DataBundle`` of splits.

A dataset is a loader registered in ``SOURCES``: ``meta(cfg)`` gives (input shape,
classes, training samples before the validation split) without reading the data (dry
runs, start-up checks) and ``load(cfg, seed)`` gives (train, test, scale) -- or (train,
test, scale, val, info) when the source has its own validation split and notes for
run.json. A source that can be streamed also gives ``stream(cfg, seed)``: the same splits
with ``LazyInputs`` (``dataset.storage``, decided by ``stream.storage_choice``).
``load_data`` finishes every dataset the same way (``finish.finish_bundle``), except a
source that splits its data itself (``bundle(cfg, seed)``: a language model's held-out
tail of the token stream). A new dataset is a module here that adds its entry, plus
``conf/dataset/<name>.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stagetrain.data.bundle import DataBundle, LazyInputs, Split, epoch_permutation
from stagetrain.data.finish import finish_bundle
from stagetrain.data.imagefolder import folder_meta, load_folder, stream_folder
from stagetrain.data.images import (
    META,
    image_meta,
    load_images,
    missing_data_message,
    stream_images,
)
from stagetrain.data.text import text_bundle, text_meta
from stagetrain.textfiles import is_lm


@dataclass(frozen=True)
class Source:
    meta: Callable[[Any], tuple]  # (shape, classes, training samples[, has its own val split])
    load: Callable[[Any, int], tuple] | None = None
    stream: Callable[[Any, int], tuple] | None = None  # the same splits, inputs read lazily
    bundle: Callable[[Any, int], DataBundle] | None = None  # instead of load + finish_bundle


SOURCES: dict[str, Source] = {name: Source(image_meta, load_images) for name in (*META, "synthetic")}
SOURCES.update({name: Source(image_meta, load_images, stream_images) for name in ("mnist", "fashion_mnist")})
SOURCES["imagefolder"] = Source(folder_meta, load_folder, stream_folder)
SOURCES.update({name: Source(text_meta, bundle=text_bundle) for name in ("text", "text_classification", "fortunes")})


def dataset_meta(cfg: Any) -> tuple[tuple[int, ...], int, int, int]:
    """(input shape, classes, training samples, labelled samples) that ``load_data`` will give."""
    shape, classes, n, *own_val = SOURCES[cfg.name].meta(cfg)  # a 4th item True: its own val split
    if is_lm(cfg):  # windows of a token stream, split by position: the meta counts the training windows
        n = n if cfg.max_train is None else min(n, cfg.max_train)
        return shape, classes, n, n
    if cfg.classes is not None:
        n = round(n * len(cfg.classes) / classes)
        classes = len(cfg.classes)
    if not (own_val and own_val[0]):
        n = n - max(classes, round(cfg.val_fraction * n))
    if cfg.max_train is not None:
        n = min(n, cfg.max_train)
    return shape, classes, n, max(classes, round(n * cfg.labeled_fraction))


def load_data(cfg: Any, seed: int, device: Any = None) -> DataBundle:
    """Read the dataset named by ``cfg`` (the ``dataset`` node) and split it, on the CPU:
    in memory or streamed (``dataset.storage``; ``auto`` weighs it against the free memory
    of ``device``, the host's when None)."""
    from stagetrain.data.stream import storage_choice

    source = SOURCES[cfg.name]
    shape, _, n, *_ = source.meta(cfg)
    itemsize = 4 if cfg.name == "synthetic" else 1
    storage, why = storage_choice(cfg, source.stream is not None, n * math.prod(shape) * itemsize, device)
    if source.bundle is not None:
        bundle = source.bundle(cfg, seed)
        bundle.info.update({"storage": storage, "storage_reason": why})
        return bundle
    train, test, scale, *rest = (source.stream if storage == "stream" else source.load)(cfg, seed)
    bundle = finish_bundle(cfg, seed, train, test, scale, rest[0] if rest else None)
    workers = int(getattr(cfg, "workers", 0))
    for split in (bundle.train, bundle.val, bundle.test):
        if split.streamed:
            split.x.workers = workers
    if bundle.train.streamed:
        bundle.train.x.augment = getattr(cfg, "augment", "none")
    bundle.info.update({"storage": storage, "storage_reason": why, **(rest[1] if len(rest) > 1 else {}),
                        "mean": bundle.mean.flatten().tolist(), "std": bundle.std.flatten().tolist()})
    if storage == "stream":
        bundle.info.update(workers=workers, augment=getattr(cfg, "augment", "none"))
    return bundle


__all__ = ["DataBundle", "LazyInputs", "META", "SOURCES", "Source", "Split", "dataset_meta", "epoch_permutation",
           "load_data", "missing_data_message"]

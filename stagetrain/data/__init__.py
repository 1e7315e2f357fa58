"""Datasets: every source gives the engine a ``DataBundle`` of splits.

A dataset is a loader registered in ``SOURCES``: ``meta(cfg)`` gives (input shape,
classes, training samples before the validation split) without reading the data (dry
runs, start-up checks) and ``load(cfg, seed)`` gives (train, test, scale). ``load_data``
finishes every dataset the same way (``bundle.finish_bundle``), except a source that
splits its data itself (``bundle(cfg, seed)``: a language model's held-out tail of the
token stream). A new dataset is a module here that adds its entry, plus
``conf/dataset/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stagetrain.data.bundle import DataBundle, Split, epoch_permutation, finish_bundle
from stagetrain.data.images import META, image_meta, load_images, missing_data_message
from stagetrain.data.text import text_bundle, text_meta
from stagetrain.textfiles import is_lm


@dataclass(frozen=True)
class Source:
    meta: Callable[[Any], tuple[tuple[int, ...], int, int]]
    load: Callable[[Any, int], tuple[Split, Split, float]] | None = None
    bundle: Callable[[Any, int], DataBundle] | None = None  # instead of load + finish_bundle


SOURCES: dict[str, Source] = {name: Source(image_meta, load_images) for name in (*META, "synthetic")}
SOURCES.update({name: Source(text_meta, bundle=text_bundle) for name in ("text", "text_classification", "fortunes")})


def dataset_meta(cfg: Any) -> tuple[tuple[int, ...], int, int, int]:
    """(input shape, classes, training samples, labelled samples) that ``load_data`` will give."""
    shape, classes, n = SOURCES[cfg.name].meta(cfg)
    if is_lm(cfg):  # windows of a token stream, split by position: the meta counts the training windows
        n = n if cfg.max_train is None else min(n, cfg.max_train)
        return shape, classes, n, n
    if cfg.classes is not None:
        n = round(n * len(cfg.classes) / classes)
        classes = len(cfg.classes)
    n = n - max(classes, round(cfg.val_fraction * n))
    if cfg.max_train is not None:
        n = min(n, cfg.max_train)
    return shape, classes, n, max(classes, round(n * cfg.labeled_fraction))


def load_data(cfg: Any, seed: int) -> DataBundle:
    """Read the dataset named by ``cfg`` (the ``dataset`` node) and split it, on the CPU."""
    source = SOURCES[cfg.name]
    if source.bundle is not None:
        return source.bundle(cfg, seed)
    train, test, scale = source.load(cfg, seed)
    return finish_bundle(cfg, seed, train, test, scale)


__all__ = ["DataBundle", "META", "SOURCES", "Source", "Split", "dataset_meta", "epoch_permutation",
           "load_data", "missing_data_message"]

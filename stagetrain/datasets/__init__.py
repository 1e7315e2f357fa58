"""Datasets: ``dataset=<name>`` is a plug (``core/plugs.py``): the folder
``stagetrain/datasets/<name>/`` (or an installed package under the entry-point group
``stagetrain.datasets``) plus ``conf/dataset/<name>.yaml``; adding one edits nothing else.

A dataset's ``config.py`` imports no torch (the config layer loads it at start-up) and defines:

* ``Config`` -- its options dataclass (``schema.DatasetConfig`` or a subclass of it);
* ``validate(ds)`` -- raises ``StagetrainError`` for option values it cannot read (no
  file is read; the options every dataset has are checked by ``validate`` here and the
  ranges table, ``core/ranges.py``);
* ``meta(ds)`` -- (input shape, classes, training samples before the validation split[,
  True when it has its own validation split]) without reading the data where it can (dry
  runs, start-up checks; language-model data: the vocabulary as classes);
* optionally ``inputs(ds)`` -- ``image`` (C x H x W), ``features`` or ``tokens``
  (default: ``image`` for three-dimensional shapes, else ``features``);
* optionally ``task(ds)`` -- ``classification`` (default) or ``lm`` (next-token targets);
* optionally ``vocab_size(ds)`` -- token ids the data gives (``tokens`` inputs);
* optionally ``STREAMABLE = True`` -- it has a streamed reader (``dataset.storage=stream``);
* optionally ``ITEMSIZE`` -- bytes an input element takes in memory (default 1: uint8);
* optionally ``samples(ds)`` -- samples it holds in memory, every split (the memory check;
  default: 1.3 times the training samples).

Its implementation (``reader.py``, may import torch, reached through the package) gives
``load(ds, seed)`` -> (train, test, scale[, val, info]) which ``load_data`` finishes the
same way for every dataset (``data.finish.finish_bundle``), ``stream(ds, seed)`` for a
streamable one (the same splits, inputs read lazily), or ``bundle(ds, seed, storage)`` -> a
whole ``DataBundle`` when the dataset splits itself (a language model's held-out tail), in
the storage ``load_data`` chose (``memory`` unless the plug is ``STREAMABLE``).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plugs import axis

DATASETS = axis("dataset")


def dataset(name: str) -> ModuleType:
    """The dataset plug ``dataset=<name>``, or one paragraph naming the valid ones."""
    return DATASETS.plug(name)


def validate(ds: Any) -> None:
    """The rules every dataset shares that a range cannot say (classes, storage), then the
    plug's own ``validate``; raises ``StagetrainError``."""
    plug = dataset(ds.name)
    check_classes("dataset.classes", ds.classes)
    can = f"it can be streamed for {', '.join(n for n in DATASETS if streamable(n))}"
    if ds.storage == "stream" and not streamable(ds.name):
        raise StagetrainError(f"dataset.storage=stream: dataset={ds.name} is always read into memory; {can}. "
                              "Use dataset.storage=auto or memory.")
    if ds.augment != "none" and (not streamable(ds.name) or ds.storage == "memory"):
        raise StagetrainError(f"dataset.augment={ds.augment} runs per sample in the streamed loader's workers, so it "
                              f"needs a streamed dataset ({can}) and dataset.storage=stream or auto "
                              f"(got dataset={ds.name}, dataset.storage={ds.storage}).")
    plug.validate(ds)


def check_classes(key: str, classes: Any) -> None:
    """A class subset (``dataset.classes``, finetune's ``strategy.pretrain.classes``): None
    (every class) or at least two distinct non-negative labels."""
    if classes is None:
        return
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0:
        raise StagetrainError(
            f"{key}={classes} is not valid: give at least two distinct non-negative class labels, e.g. [0,1,2,3,4].")


def _config(ds: Any) -> ModuleType:
    DATASETS.plug(ds.name)
    return DATASETS.config(ds.name)


def inputs(ds: Any) -> str:
    """What a sample is: ``image`` (C x H x W), ``features`` or ``tokens``."""
    own = getattr(_config(ds), "inputs", None)
    if own is not None:
        return own(ds)
    return "image" if len(_config(ds).meta(ds)[0]) == 3 else "features"


def task(ds: Any) -> str:
    """``classification`` or ``lm`` (next-token targets)."""
    own = getattr(_config(ds), "task", None)
    return "classification" if own is None else own(ds)


def is_lm(ds: Any) -> bool:
    return task(ds) == "lm"


def vocab_size(ds: Any) -> int:
    """Token ids a ``tokens`` dataset gives (padding and unknown included)."""
    return int(_config(ds).vocab_size(ds))


def streamable(name: str) -> bool:
    return bool(getattr(DATASETS.config(name), "STREAMABLE", False))


def itemsize(ds: Any) -> int:
    return int(getattr(_config(ds), "ITEMSIZE", 1))


def samples_held(ds: Any, n_train: int) -> int:
    """Samples the dataset keeps in memory: its plug's ``samples(ds)``, else about 1.3 times
    the training samples (validation and test beside them)."""
    own = getattr(_config(ds), "samples", None)
    return int(own(ds)) if own is not None else round(n_train * 1.3)


def dataset_meta(cfg: Any) -> tuple[tuple[int, ...], int, int, int]:
    """(input shape, classes, training samples, labelled samples) that ``load_data`` will give."""
    shape, classes, n, *own_val = _config(cfg).meta(cfg)  # a 4th item True: its own val split
    if is_lm(cfg):  # windows of a token stream, split by position: the meta counts the training windows
        n = n if cfg.max_train is None else min(n, cfg.max_train)
        return tuple(shape), classes, n, n
    if cfg.classes is not None:
        n = round(n * len(cfg.classes) / classes)
        classes = len(cfg.classes)
    if not (own_val and own_val[0]):
        n = n - max(classes, round(cfg.val_fraction * n))
    if cfg.max_train is not None:
        n = min(n, cfg.max_train)
    return tuple(shape), classes, n, max(classes, round(n * cfg.labeled_fraction))


def load_data(cfg: Any, seed: int, device: Any = None) -> Any:
    """Read the dataset named by ``cfg`` (the ``dataset`` node) and split it, on the CPU, as a
    ``DataBundle``: in memory or streamed (``dataset.storage``; ``auto`` weighs it against
    the free memory of ``device``, the host's when None)."""
    from stagetrain.data.finish import finish_loaded
    from stagetrain.data.stream import storage_choice

    plug, can_stream, nbytes = dataset(cfg.name), streamable(cfg.name), 0
    if can_stream and cfg.storage == "auto":  # only auto weighs the inputs' size (the metadata's)
        shape, _, n, *_ = plug.meta(cfg)
        nbytes = n * math.prod(shape) * itemsize(cfg)
    storage, why = storage_choice(cfg, can_stream, nbytes, device)
    own_bundle = getattr(plug, "bundle", None)
    if own_bundle is not None:
        bundle = own_bundle(cfg, seed, storage)
        bundle.info.update({"storage": storage, "storage_reason": why})
        return bundle
    loaded = (plug.stream if storage == "stream" else plug.load)(cfg, seed)
    return finish_loaded(cfg, seed, loaded, storage, why)

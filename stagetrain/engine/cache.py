"""The frozen-prefix feature cache: the prefix's output over the stage's data, computed once.

Exact, because a frozen prefix runs in eval mode (no dropout, BN statistics fixed). Built
only when the stage runs at least two epochs (``cache=auto``), fits ``cache_max_bytes`` and
the training data is not augmented (cached features would freeze one augmentation);
its cost is counted once, in the FLOPs of the stage that builds it.
"""

from __future__ import annotations

import math
import time

import torch

from stagetrain.core.plan import Stage
from stagetrain.data.stream import sequential_batches
from stagetrain.engine.options import EngineOptions
from stagetrain.engine.runtime import StageRuntime, wants_cache
from stagetrain.engine.state import RunState
from stagetrain.models import StagedModel


def build_cache(rt: StageRuntime, model: StagedModel, stage: Stage, opts: EngineOptions,
                input_norm: str, state: RunState) -> None:
    """Fill ``rt.cache`` (or say in ``rt.cache_note`` why not) and charge its cost."""
    n = len(rt.indices)
    shape = model.feature_shape(rt.prefix - 1)
    dtype = torch.bfloat16 if opts.cache_dtype == "bf16" else torch.float32
    nbytes = n * math.prod(shape) * (2 if dtype == torch.bfloat16 else 4)
    # the stage's planned epochs, not those left: a resumed stage decides as the uninterrupted one did
    if not wants_cache(stage, rt.prefix, rt.epochs):
        rt.cache_note = "off (fewer than 2 epochs)"
        return
    augment = rt.data.train.x.augment if rt.data.train.streamed else "none"
    if augment != "none":
        rt.cache_note = f"off (dataset.augment={augment}: cached features would freeze one augmentation)"
        return
    if nbytes > opts.cache_max_bytes:
        rt.cache_note = f"off ({nbytes / 2**20:.0f} MiB > cache_max_bytes)"
        return
    start = time.perf_counter()
    data, bs = rt.data, opts.batch_size  # training-sized chunks: large conv chunks run 2-4x slower per sample
    out = torch.empty((n, *shape), dtype=dtype, device=rt.indices.device)
    streamed = data.train.streamed  # then read in order through the split's loader
    xs = sequential_batches(data.train.x.take(rt.indices), bs) if streamed else None
    with torch.no_grad():
        for i in range(0, n, bs):
            x = data.normalize(next(xs) if streamed else data.train.x[rt.indices[i:i + bs]], input_norm)
            with torch.autocast(out.device.type, torch.bfloat16, enabled=opts.bf16):
                out[i:i + bs] = model.features(x, 0, rt.prefix).to(dtype)
    rt.cache = out
    rt.cache_note = f"on ({nbytes / 2**20:.1f} MiB)"
    fresh = state.cur.epoch == 0 and state.cur.batch == 0  # a resumed stage counted its build already
    state.charge(flops=rt.prefix_flops * n if fresh else 0.0, seconds=time.perf_counter() - start)

"""Evaluation: loss (and accuracy for supervised paths) on a split, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from stagetrain import distributed
from stagetrain.core.plan import Stage
from stagetrain.data import DataBundle
from stagetrain.data.stream import sequential_batches
from stagetrain.engine.runtime import prefix_len
from stagetrain.models import StagedModel
from stagetrain.nn.objectives import objective_of, split_metrics, stage_loss

FINAL = Stage(name="final", epochs=0, trainable=[])  # the model itself: blocks + head


@torch.no_grad()
def evaluate(model: StagedModel, helper: nn.Module | None, bundle: DataBundle, split: str,
             stage: Stage | None, input_norm: str, batch_size: int, bf16: bool,
             limit: int | None = None) -> dict[str, float]:
    """Metrics of the stage's path on ``bundle``'s split (``stage=None``: the model itself).

    Leaves model and helper in eval mode; the caller restores training modes. Under
    torchrun each rank evaluates its slice and the sums are all-reduced.
    """
    data = getattr(bundle, split)
    if limit is not None:
        data = data.subset(torch.arange(min(limit, len(data)), device=data.y.device))
    if distributed.world_size() > 1:
        lo, hi = distributed.shard_range(len(data))
        data = data.rows(lo, hi)
    stage = stage or FINAL
    helper = helper if stage.trainable else None
    model.eval()
    if helper is not None:
        helper.eval()
    prefix = prefix_len(model, stage) if stage.trainable else 0
    loss_sum, correct, n = 0.0, 0, 0
    xs = sequential_batches(data.x, batch_size) if data.streamed else None  # read ahead by its loader
    for i in range(0, len(data), batch_size):
        x = bundle.normalize(data.x[i:i + batch_size] if xs is None else next(xs), input_norm)
        y = data.y[i:i + batch_size]
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            h = model.features(x, 0, prefix)
            loss, logits = stage_loss(stage, model, helper, h, y, prefix, False)
        loss_sum += float(loss) * len(y)
        if logits is not None:
            correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    if distributed.world_size() > 1:
        loss_sum, correct, n = distributed.all_sum([loss_sum, correct, n])
    return split_metrics(objective_of(stage, model), loss_sum / n, correct, n, bundle.info.get("bytes_per_token"))

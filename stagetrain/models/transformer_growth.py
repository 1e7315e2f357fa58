"""Growth operators of ``transformer_layer`` blocks.

* ``widen_mlp`` (net2net): the MLP hidden size of one layer grows; hidden unit j copies old
  unit g(j) (``mlp.fc1`` row and bias), and ``mlp.fc2``'s column of each copy is divided by
  the number of replicas, so the layer's output is unchanged (GELU acts per unit). The
  consumer of the widened units is the same layer's fc2, so nothing outside the layer
  changes. ``random``: new units and their fc2 columns are freshly initialised.
* ``deepen_layer`` (residual_zero, identity): a new layer above layer ``index`` whose
  ``attn.proj`` and ``mlp.fc2`` weights and biases are zero: both residual branches add
  zero, so the layer is the identity, in training mode too (dropout of zero is zero); its
  other weights are fresh, so the projections receive gradients at once (cf. Shen et al.
  2022's staged training). ``random``: a freshly initialised layer.

Depth stacking (``growth.ops.stack``) is generic: every layer keeps its [T, D] shape.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.models.growth_units import (
    consumer_units,
    copy_parts,
    copy_units,
    insert_copy,
    own_units,
    read_units,
    widen_info,
)
from stagetrain.models.staged import StagedModel


def widen_mlp(model: StagedModel, index: int, width: int, method: str = "net2net", noise: float = 0.0,
              generator: torch.Generator | None = None) -> tuple[StagedModel, dict[str, Any]]:
    """Widen the MLP of layer ``index`` to ``width`` hidden units; returns the new model and
    the optimizer-state map (fc1 rows and bias are the units, fc2 columns read them)."""
    spec = copy.deepcopy(model.arch)
    block = spec.blocks[index]
    name, old = block.name, int(block.mlp_hidden)
    if width < old:
        raise StagetrainError(f"cannot shrink the MLP of {name} from {old} to {width} hidden units: growth only widens.")
    g = torch.cat([torch.arange(old), torch.randint(old, (width - old,), generator=generator)])
    block.mlp_hidden = int(width)
    new = StagedModel(spec).to(next(model.parameters()))
    src, dst = model.blocks[name], new.blocks[name]
    with torch.no_grad():
        copy_parts(model, new, {name})
        rest = {k: v for k, v in src.state_dict().items() if not k.startswith("mlp.fc1.") and k != "mlp.fc2.weight"}
        dst.load_state_dict(rest, strict=False)
        copy_units(dst.mlp.fc1.weight, src.mlp.fc1.weight, g, method)
        copy_units(dst.mlp.fc1.bias, src.mlp.fc1.bias, g, method)
        if method != "random" and noise > 0 and width > old:
            scale = noise * src.mlp.fc1.weight.std()
            extra = torch.randn(dst.mlp.fc1.weight[old:].shape, generator=generator).to(dst.mlp.fc1.weight)
            dst.mlp.fc1.weight[old:] += scale * extra
        read_units(dst.mlp.fc2.weight, src.mlp.fc2.weight, g, method, dim=1)
    prefix = f"blocks.{name}.mlp."
    return new, widen_info(g, method, [own_units(prefix + "fc1.weight"), own_units(prefix + "fc1.bias")],
                           [consumer_units(prefix + "fc2.weight", dim=1)])


def deepen_layer(model: StagedModel, index: int, kind: str = "residual_zero") -> StagedModel:
    """Insert a layer like layer ``index`` above it: the identity (residual_zero, identity)
    or freshly initialised (random)."""
    new, layer = insert_copy(model, index)
    with torch.no_grad():
        if kind in ("residual_zero", "identity"):
            for linear in (layer.attn.proj, layer.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    return new

"""Completing a ``model=custom`` spec with one probe forward: the contract check (the parts
run in order compute the module's own forward), every parameter belongs to a part, and
each part's output shape and forward FLOPs per sample.

Run once when the spec is built (families are torch-free, so they import this lazily); the
spec then carries ``out_shape`` and ``flops`` and rebuilds without probing. The probe uses
a fixed seed inside ``fork_rng``, so it leaves the run's random state untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stagetrain.core.errors import StagetrainError
from stagetrain.core.partbase import Part
from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.models.custom import adapt_channels, native_prefixes, rename
from stagetrain.models.registry import build_part, build_shared

PROBE_BATCH = 2  # BatchNorm in train mode (FLOP count) needs more than one sample


def complete(spec: ModelSpec | dict[str, Any]) -> dict[str, Any]:
    """``spec`` with out_shape/flops per part and the head's input width; refuses a cut
    that does not reproduce the module's forward."""
    arch = copy.deepcopy(as_spec(spec))  # a copy: the parts' shapes and FLOPs are written into it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        shared = build_shared(arch)
        parts = _parts(arch, shared)
        _check_coverage(arch, shared)
        x = torch.randn(PROBE_BATCH, *arch.in_shape)
        _check_contract(arch, shared, parts, x)
        _measure_flops(parts, x)
    return arch.to_dict()


def _parts(arch: ModelSpec, shared: nn.Module) -> list[tuple[Part, nn.Module]]:
    """(part, module) in forward order: stem (if any), blocks, head."""
    parts = [(arch.stem, build_part(arch.stem, "stem", shared))] if arch.stem is not None else []
    parts += [(b, build_part(b, "block", shared)) for b in arch.blocks]
    return parts + [(arch.head, build_part(arch.head, "head", shared))]


def describe(arch: ModelSpec) -> str:
    stem = arch.stem
    stem_names = getattr(stem, "modules", [stem.TAG]) if stem is not None else []
    return (f"model.target={arch.shared.target} cut as stem={list(stem_names)}, "
            f"blocks={[b.path for b in arch.blocks]}, head_input={arch.head.input or 'none'}, "
            f"head={arch.head.modules}")


CONTRACT = ("stagetrain runs the parts one after another (the stem's submodules, each block in order, the "
            "head_input glue, the head's submodules), so every operation of the module's forward must happen "
            "inside one of the named submodules, in that order; the split forward is what trains, freezes and "
            "caches. Fix the names or model.head_input (none|flatten|pool_flatten|pool|cls_token), or wrap the "
            "network in a module whose forward is such a chain.")


def _check_coverage(arch: ModelSpec, shared: nn.Module) -> None:
    pairs = native_prefixes(arch)
    left = [k for k in shared.state_dict() if rename(k, pairs) is None]
    if left:
        raise StagetrainError(
            f"{describe(arch)} leaves parameters or buffers outside every part: {', '.join(left[:5])}"
            f"{' ...' if len(left) > 5 else ''}. Name their submodules in model.stem, model.blocks or model.head.")


def _check_contract(arch: ModelSpec, shared: nn.Module, parts: list[tuple[Part, nn.Module]],
                    x: torch.Tensor) -> None:
    """Compare the split forward with the module's own (eval mode); record shapes."""
    shared.eval()
    with torch.no_grad():
        try:
            ref = shared(adapt_channels(x, getattr(arch.stem, "in_channels", None)))
        except Exception as e:
            raise StagetrainError(
                f"model.target={arch.shared.target} fails on a probe batch of shape {list(x.shape)} "
                f"({type(e).__name__}: {e}). Check model.kwargs, the dataset's input shape and "
                "model.in_channels_adapt.") from None
        h = x
        for part, module in parts:
            where = getattr(part, "name", None) or ("head" if part is arch.head else "stem")
            try:
                if part is arch.head:
                    part.inp = int(module.glue(h)[0].numel())
                h = module(h)
            except Exception as e:
                raise StagetrainError(f"{describe(arch)}: running the parts in order fails at {where} "
                                      f"({type(e).__name__}: {e}). {CONTRACT}") from None
            if part is not arch.head and part is not arch.stem:
                part.out_shape = list(h.shape[1:])
    if not isinstance(ref, torch.Tensor) or ref.shape != h.shape or not torch.allclose(h, ref, rtol=1e-4, atol=1e-5):
        diff = (h - ref).abs().max().item() if isinstance(ref, torch.Tensor) and ref.shape == h.shape else None
        got = f"largest difference {diff:.3g}" if diff is not None else (
            f"output {type(ref).__name__}{list(getattr(ref, 'shape', []))} vs split {list(h.shape)}")
        raise StagetrainError(f"{describe(arch)} does not compute the module's own forward on a probe batch "
                              f"({got}). {CONTRACT}")
    if list(h.shape[1:]) != [arch.num_classes]:
        raise StagetrainError(
            f"{describe(arch)} outputs shape {list(h.shape[1:])} per sample, but the data has "
            f"{arch.num_classes} classes and the head has no nn.Linear to resize. Pass the class count in "
            "model.kwargs (e.g. model.kwargs.num_classes=10).")


def _measure_flops(parts: list[tuple[Part, nn.Module]], x: torch.Tensor) -> None:
    """Forward FLOPs per sample of each part, in train mode (as the engine runs them)."""
    h = x
    with torch.no_grad():
        for part, module in parts:
            module.train()
            with FlopCounterMode(display=False) as counter:
                h = module(h)
            part.flops = counter.get_total_flops() / x.shape[0]

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
from stagetrain.models.custom import adapt_channels, native_prefixes, rename
from stagetrain.models.registry import build_part, build_shared

PROBE_BATCH = 2  # BatchNorm in train mode (FLOP count) needs more than one sample


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with out_shape/flops per part and the head's input width; refuses a cut
    that does not reproduce the module's forward."""
    spec = copy.deepcopy(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        shared = build_shared(spec)
        parts = _parts(spec, shared)
        _check_coverage(spec, shared)
        x = torch.randn(PROBE_BATCH, *spec["in_shape"])
        _check_contract(spec, shared, parts, x)
        _measure_flops(parts, x)
    return spec


def _parts(spec: dict[str, Any], shared: nn.Module) -> list[tuple[dict[str, Any], nn.Module]]:
    """(part spec, module) in forward order: stem (if any), blocks, head."""
    parts = [(spec["stem"], build_part(spec["stem"], "stem", shared))] if spec.get("stem") else []
    parts += [(b, build_part(b, "block", shared)) for b in spec["blocks"]]
    return parts + [(spec["head"], build_part(spec["head"], "head", shared))]


def describe(spec: dict[str, Any]) -> str:
    stem = spec.get("stem") or {}
    stem_names = stem.get("modules", [stem.get("type")] if stem else [])
    return (f"model.target={spec['shared']['target']} cut as stem={list(stem_names)}, "
            f"blocks={[b['path'] for b in spec['blocks']]}, head_input={spec['head'].get('input', 'none')}, "
            f"head={spec['head']['modules']}")


CONTRACT = ("stagetrain runs the parts one after another (the stem's submodules, each block in order, the "
            "head_input glue, the head's submodules), so every operation of the module's forward must happen "
            "inside one of the named submodules, in that order; the split forward is what trains, freezes and "
            "caches. Fix the names or model.head_input (none|flatten|pool_flatten|pool|cls_token), or wrap the "
            "network in a module whose forward is such a chain.")


def _check_coverage(spec: dict[str, Any], shared: nn.Module) -> None:
    pairs = native_prefixes(spec)
    left = [k for k in shared.state_dict() if rename(k, pairs) is None]
    if left:
        raise StagetrainError(
            f"{describe(spec)} leaves parameters or buffers outside every part: {', '.join(left[:5])}"
            f"{' ...' if len(left) > 5 else ''}. Name their submodules in model.stem, model.blocks or model.head.")


def _check_contract(spec: dict[str, Any], shared: nn.Module, parts: list[tuple[dict[str, Any], nn.Module]],
                    x: torch.Tensor) -> None:
    """Compare the split forward with the module's own (eval mode); record shapes."""
    shared.eval()
    stem = spec.get("stem") or {}
    with torch.no_grad():
        try:
            ref = shared(adapt_channels(x, stem.get("in_channels")))
        except Exception as e:
            raise StagetrainError(
                f"model.target={spec['shared']['target']} fails on a probe batch of shape {list(x.shape)} "
                f"({type(e).__name__}: {e}). Check model.kwargs, the dataset's input shape and "
                "model.in_channels_adapt.") from None
        h = x
        for part, module in parts:
            where = part.get("name") or ("head" if part is spec["head"] else "stem")
            try:
                if part is spec["head"]:
                    part["in"] = int(module.glue(h)[0].numel())
                h = module(h)
            except Exception as e:
                raise StagetrainError(f"{describe(spec)}: running the parts in order fails at {where} "
                                      f"({type(e).__name__}: {e}). {CONTRACT}") from None
            if part is not spec["head"] and part is not spec.get("stem"):
                part["out_shape"] = list(h.shape[1:])
    if not isinstance(ref, torch.Tensor) or ref.shape != h.shape or not torch.allclose(h, ref, rtol=1e-4, atol=1e-5):
        diff = (h - ref).abs().max().item() if isinstance(ref, torch.Tensor) and ref.shape == h.shape else None
        got = f"largest difference {diff:.3g}" if diff is not None else (
            f"output {type(ref).__name__}{list(getattr(ref, 'shape', []))} vs split {list(h.shape)}")
        raise StagetrainError(f"{describe(spec)} does not compute the module's own forward on a probe batch "
                              f"({got}). {CONTRACT}")
    if list(h.shape[1:]) != [spec["num_classes"]]:
        raise StagetrainError(
            f"{describe(spec)} outputs shape {list(h.shape[1:])} per sample, but the data has "
            f"{spec['num_classes']} classes and the head has no nn.Linear to resize. Pass the class count in "
            "model.kwargs (e.g. model.kwargs.num_classes=10).")


def _measure_flops(parts: list[tuple[dict[str, Any], nn.Module]], x: torch.Tensor) -> None:
    """Forward FLOPs per sample of each part, in train mode (as the engine runs them)."""
    h = x
    with torch.no_grad():
        for part, module in parts:
            module.train()
            with FlopCounterMode(display=False) as counter:
                h = module(h)
            part["flops"] = counter.get_total_flops() / x.shape[0]

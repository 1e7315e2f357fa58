"""A spec and its weights read from a file, checked as data before anything is built
(``check_spec``: types, ranges, block count, size; the parts of a user module's spec -- its
own part types, submodule paths as strings, a known head input; then built on the ``meta``
device to count its parameters) and weights that fit the architecture (the same keys,
shapes and floating-point types). Used by the preflight, a checkpoint being resumed and a
source file. Torch-free to import.
"""

from __future__ import annotations

import math
from typing import Any

from stagetrain.core.errors import StagetrainError

FILE_HINT = "It was not written by stagetrain, or was altered; use the file the run wrote."
MAX_BLOCKS = 1000  # blocks of one model; the deepest family default has 12
MAX_UNITS = 1_000_000  # any one size in a spec: units, channels, classes, tokens
MAX_PARAMETERS = 2**33  # 8.6e9 parameters: 34 GB of fp32 weights alone
MAX_SPEC_NODES = 200_000  # values in a spec (a spec of a 1,000-block model has a few 10,000)


def _walk(node: Any, where: str, depth: int, count: list[int], cap: int = MAX_UNITS) -> None:
    count[0] += 1
    if count[0] > MAX_SPEC_NODES or depth > 12:
        raise ValueError(f"{where}: the spec is too large or too deeply nested to be an architecture")
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: a key of type {type(k).__name__}, not a string")
            _walk(v, f"{where}.{k}", depth + 1, count, cap)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _walk(v, f"{where}[{i}]", depth + 1, count, cap)
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        if not -1 <= node <= cap:
            raise ValueError(f"{where}={node} is out of range (at most {cap:,})")
    elif isinstance(node, float):
        if not math.isfinite(node):
            raise ValueError(f"{where}={node} is not finite")
    elif isinstance(node, str):
        if len(node) > 10_000:
            raise ValueError(f"{where} is a string of {len(node):,} characters")
    else:
        raise ValueError(f"{where} is a {type(node).__name__}, not a plain value")


def _structure(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"the spec is a {type(spec).__name__}, not a mapping with blocks and a head")
    for key, kind in (("blocks", list), ("head", dict), ("in_shape", list)):
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"'{key}' is {'missing' if key not in spec else type(spec[key]).__name__}, "
                             f"not a {kind.__name__}")
    if not 1 <= len(spec["in_shape"]) <= 3 or not all(isinstance(d, int) and d > 0 for d in spec["in_shape"]):
        raise ValueError(f"in_shape={spec['in_shape']} is not 1 to 3 positive sizes")
    if len(spec["blocks"]) > MAX_BLOCKS:
        raise ValueError(f"{len(spec['blocks']):,} blocks (at most {MAX_BLOCKS:,})")
    names = set()
    for i, block in enumerate(spec["blocks"]):
        if not isinstance(block, dict) or not isinstance(block.get("name"), str) or block["name"] in names:
            raise ValueError(f"blocks[{i}] is not a block with its own name")
        names.add(block["name"])
    from stagetrain.models.basic import ACTIVATIONS

    for i, part in enumerate([*spec["blocks"], spec["head"], spec.get("stem") or {}]):
        act = part.get("act") if isinstance(part, dict) else None
        if act is not None and act not in ACTIVATIONS:
            raise ValueError(f"part {i} has activation {act!r} (known: {', '.join(ACTIVATIONS)})")


def check_spec(spec: Any, source: str, hint: str = FILE_HINT, cap: int = MAX_UNITS,
               weights: dict[str, Any] | None = None) -> int:
    """Validate an architecture spec and return its parameter count; StagetrainError naming
    ``source`` (e.g. ``strategy.source=<file>``) and what is wrong otherwise. ``cap`` bounds
    every integer of the spec (a file's; the config's own sizes are checked by ``ranges``).
    ``weights`` (a file's state dict) must fit the spec: the same keys and shapes."""
    try:
        _structure(spec)
        _walk(spec, "spec", 0, [0], cap)
    except ValueError as e:
        raise StagetrainError(f"The architecture in {source} is not valid: {e}. {hint}") from None
    import torch

    from stagetrain.models import StagedModel

    user_code = False
    if spec.get("shared"):  # the user's own module (model=custom/torchvision): code, run only when vouched for
        from stagetrain.core import trust

        trust.check_spec(spec, source)
        check_shared_parts(spec, source, hint)
        user_code = spec["shared"]["target"] not in trust.builtin_targets()
    try:
        with torch.device("meta"):
            model = StagedModel(spec)
    except Exception as e:  # noqa: BLE001 - any malformed field of a part
        if user_code:  # a vouched-for module that does not build on the meta device: built for real later
            return 0
        if isinstance(e, StagetrainError):
            raise StagetrainError(f"The architecture in {source} cannot be built: {e}") from None
        raise StagetrainError(f"The architecture in {source} cannot be built ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else 'a malformed part'}).") from None
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMETERS:
        raise StagetrainError(f"The architecture in {source} has {params:,} parameters, more than stagetrain "
                              f"runs ({MAX_PARAMETERS:,}).")
    if weights is not None:
        check_fits(model.state_dict(), weights, source)
    return params


def check_shared_parts(spec: dict[str, Any], source: str, hint: str) -> None:
    try:
        _shared_parts(spec)
    except ValueError as e:
        raise StagetrainError(f"The architecture in {source} is not valid: {e}. {hint}") from None


SHARED_PARTS = {"stem": ("custom_stem", "vit_stem"), "blocks": ("custom_block",), "head": ("custom_head",)}


def _shared_parts(spec: dict[str, Any]) -> None:
    """The parts of a user module's spec: its own part types, with submodule paths as strings."""
    from stagetrain.models.custom import GLUE

    parts = [("stem", spec.get("stem") or {}), *(("blocks", b) for b in spec["blocks"]), ("head", spec["head"])]
    for where, part in parts:
        if where == "stem" and not part:
            continue
        if not isinstance(part, dict) or part.get("type") not in SHARED_PARTS[where]:
            kind = part.get("type") if isinstance(part, dict) else part
            raise ValueError(f"a {where} part of type {kind!r} (a user module's are {', '.join(SHARED_PARTS[where])})")
        paths = [part[k] for k in ("path", "conv", "class_token", "pos_embedding", "dropout") if k in part]
        paths += list(part.get("modules", [])) if isinstance(part.get("modules", []), list) else [None]
        if not all(isinstance(x, str) for x in paths):
            raise ValueError(f"a {where} part names its submodules with something other than strings")
    if spec["head"].get("input", "none") not in GLUE:
        raise ValueError(f"head input {spec['head'].get('input')!r} (known: {', '.join(GLUE)})")


def check_floats(own: dict[str, Any], weights: dict[str, Any], source: str) -> None:
    """Refuse a tensor of ``weights`` that is not floating-point where the model's (``own``,
    under the same key) is: an int8 or bool tensor would be cast into it silently."""
    for k in own:
        if k in weights and own[k].is_floating_point() and hasattr(weights[k], "is_floating_point") \
                and not weights[k].is_floating_point():
            raise StagetrainError(
                f"{source}: its weight {k} is {str(weights[k].dtype).replace('torch.', '')}: not floating-point, "
                "where the model's weight is; it is not loaded (it would be cast silently, e.g. a "
                "quantized or boolean tensor). Give the float weights the model was saved with.")


def check_fits(own: dict[str, Any], weights: dict[str, Any], source: str) -> None:
    """A file's weights against the architecture the same file gives: keys, shapes, dtypes."""
    if not isinstance(weights, dict):
        raise StagetrainError(f"The weights in {source} are a {type(weights).__name__}, not a state dict. {FILE_HINT}")
    check_floats(own, weights, source)
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [f"{k} {list(getattr(weights[k], 'shape', []))} vs {list(own[k].shape)}" for k in own
              if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(own[k].shape)]
    problems = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in (
        ("missing weights", missing), ("weights the architecture lacks", extra),
        ("shapes (weights vs architecture)", shapes)) if keys]
    if problems:
        raise StagetrainError(f"The weights in {source} do not fit the architecture stored with them "
                              f"({'; '.join(problems)}). {FILE_HINT}")

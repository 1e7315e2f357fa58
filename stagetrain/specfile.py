"""A spec and its weights read from a file, checked as data before anything is built: the
parts of a user module's spec (its own part types, submodule paths as strings, a known head
input) and weights that fit the architecture (the same keys, shapes and floating-point
types). ``preflight.check_spec`` calls both. Torch-free to import.
"""

from __future__ import annotations

from typing import Any

from stagetrain.errors import StagetrainError

FILE_HINT = "It was not written by stagetrain, or was altered; use the file the run wrote."


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

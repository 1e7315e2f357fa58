"""Who may name code: the user's own config, never a file.

A spec's ``custom_module`` part names a Python callable (``target``) that builds the user's
network. A spec made from the config (``model=custom model.target=...``, ``model=torchvision``)
names it because the user did; a spec read from a file (a checkpoint, a model.safetensors'
``arch`` metadata, a run directory being resumed or loaded) is data, and whatever it names
is called only when the user's config names the same target now:

* the targets the launch's config names (``model.target`` of ``model=custom``,
  ``torchvision.models.<model.arch>`` of ``model=torchvision``, and ``trust_targets=[...]``)
  are vouched for by the run layer (``vouched``) before anything is read -- before a resume
  swaps in the run's saved config, which is itself a file;
* ``stagetrain.load(run_dir, trust_target=...)`` vouches for its argument;
* torchvision's own builders of ``tvarchs.ARCHS`` need no vouching (stagetrain's
  table, built with ``weights=None``, never downloading).

``require`` is called where a target is imported (``resolve_target`` below, the
only importer: ``models/custom.build_module`` goes through it) and where a spec read from a
file is checked (``specfile.check_spec`` via ``check_spec``). Torch-free.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.tvarchs import ARCHS


class UntrustedCode(StagetrainError):
    """A file names code the user's config does not: refused, never a reason to fall back."""


_VOUCHED: ContextVar[frozenset[str]] = ContextVar("stagetrain_vouched", default=frozenset())


def builtin_targets() -> frozenset[str]:
    """torchvision's builders in stagetrain's own table: trusted without vouching."""
    return frozenset(f"torchvision.models.{arch}" for arch in ARCHS)


def named_by(cfg: Any) -> set[str]:
    """The targets a launch's config (a DictConfig or a dict) lists in ``trust_targets``
    (what its model family's config names is added by ``families.vouched_by``)."""
    return {str(t) for t in cfg.get("trust_targets") or []}


@contextlib.contextmanager
def vouched(targets: Iterable[str]) -> Iterator[None]:
    """Within this block, a spec may name any of ``targets`` (added to those vouched already)."""
    token = _VOUCHED.set(_VOUCHED.get() | frozenset(str(t) for t in targets))
    try:
        yield
    finally:
        _VOUCHED.reset(token)


def is_trusted(target: str) -> bool:
    return target in _VOUCHED.get() or target in builtin_targets()


def require(target: Any, where: str) -> None:
    """Refuse to import or call ``target`` unless the user's config vouches for it now."""
    if isinstance(target, str) and is_trusted(target):
        return
    shown = target if isinstance(target, str) and target.isprintable() and len(target) <= 200 else repr(target)[:200]
    raise UntrustedCode(
        f"{where} names the Python callable {shown} to build its network, and stagetrain does not run code "
        "that a file names: only code your own config names. Nothing was imported or called. If you trust "
        f"this file and {shown} is your own network, name it in your config: trust_targets=[{shown}] (or "
        f"model=custom model.target={shown} with its cut); from Python, stagetrain.load(..., "
        f"trust_target='{shown}').")


def check_spec(spec: dict[str, Any], where: str) -> None:
    """A spec read from a file: its custom target (if any) vouched for, and a builtin
    torchvision builder never asked for downloaded weights."""
    shared = spec.get("shared")
    if not shared:
        return
    if not isinstance(shared, dict) or shared.get("type") != "custom_module":
        raise StagetrainError(f"The architecture in {where} has a 'shared' part that is not a custom_module; "
                              "it was not built. It was not written by stagetrain, or was altered.")
    require(shared.get("target"), f"The architecture in {where}")
    kwargs = shared.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise StagetrainError(f"The architecture in {where} gives its target's kwargs as a "
                              f"{type(kwargs).__name__}, not a mapping; it was not built.")
    if shared["target"] not in builtin_targets():
        return
    for key, value in kwargs.items():  # weights=, weights_backbone=, pretrained=, pretrained_backbone=, ...
        if ("weights" in str(key) or "pretrained" in str(key)) and value not in (None, False):
            raise StagetrainError(f"The architecture in {where} asks {shared['target']} for {key}="
                                  f"{value!r}: stagetrain never downloads weights, and a file cannot ask it to; "
                                  "it was not built.")


def resolve_target(path: str, where: str = "") -> Callable[..., Any]:
    """The nn.Module class or builder function ``path`` (``package.module.Name``) names,
    imported with importlib -- only when the user's config vouches for it (``trust.require``;
    ``where`` says what named it when that was not the config: a file)."""
    require(path, where or f"model.target={path}, in a config read from a file (a run being resumed),")
    module_name, _, attr = str(path).rpartition(".")
    if not module_name:
        raise StagetrainError(f"model.target={path!r} is not a dotted import path; give e.g. "
                              "torchvision.models.resnet18 or mypkg.nets.Net.")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise StagetrainError(f"model.target={path} cannot be imported ({type(e).__name__}: {e}). Give the "
                              "dotted path of an nn.Module class or a function returning one, importable "
                              "from this environment (e.g. torchvision.models.resnet18)."
                              + _path_hint(e, module_name)) from None
    if not _builds_module(obj):
        raise StagetrainError(f"model.target={path} is a {type(obj).__name__}, not an nn.Module class or a Python "
                              "function that returns one; give e.g. torchvision.models.resnet18 or mypkg.nets.Net.")
    return obj


def _path_hint(error: Exception, module_name: str) -> str:
    """For a package that is not on Python's path: how to put the current folder there (the
    ``stagetrain`` console script does not search the folder it is started in)."""
    if not isinstance(error, ModuleNotFoundError):
        return ""
    top = module_name.split(".")[0]
    here = Path.cwd()
    found = (here / top).is_dir() or (here / f"{top}.py").is_file()
    where = f"'{top}' is in the current folder ({here}), but the" if found else "The"
    return (f" {where} current folder is not on Python's import path when stagetrain runs: start it as "
            f"`PYTHONPATH=. stagetrain ...` (or PYTHONPATH=<the folder holding {top}>), or install your "
            "package (`pip install -e .`).")


def _builds_module(obj: Any) -> bool:
    """An nn.Module subclass or a plain Python function (a builder): never a builtin such as
    exec or eval, a method of an object, or another callable."""
    if inspect.isclass(obj):
        from torch import nn

        return issubclass(obj, nn.Module)
    return inspect.isfunction(obj)

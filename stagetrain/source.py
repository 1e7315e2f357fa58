"""Reading a transfer source: a run directory, a checkpoint or a model.safetensors file --
or a bare weights file: a torchvision-style state dict (``torch.save(model.state_dict())``,
read with ``weights_only=True``) or a safetensors file without stagetrain's ``arch``
metadata. A bare file has no architecture (``Source.arch`` is None): ``model=`` gives it,
and ``load_bare`` maps, renames and shape-checks its keys.

The source is only ever read (never opened for writing); its SHA-256 goes into run.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from stagetrain import checkpoint as ckpt
from stagetrain.checkpoint.schema import weights
from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError


@dataclass
class Source:
    path: Path
    sha256: str
    arch: dict[str, Any] | None  # None: a bare state dict, whose architecture model= gives
    state: dict[str, torch.Tensor]


def _resolve(path: Path, which: str) -> Path:
    """The file a run directory's ``which`` (best | last | stage-<k>) refers to."""
    folder = path / "checkpoints"
    if which in ("best", "last"):
        file = folder / f"{which}.pt"
        if which == "best" and not os.path.lexists(file):  # runs without a full-model stage have no best
            file = folder / "last.pt"
        if os.path.lexists(file):  # a broken link too: reading it says what is wrong
            return file
    elif which.startswith("stage-"):
        matches = sorted(folder.glob(f"{which}-*.pt"))
        if matches:
            return matches[0]
    available = ", ".join(sorted(p.stem for p in folder.glob("*.pt"))) or "none"
    raise StagetrainError(
        f"strategy.source_checkpoint={which}: {path} has no such checkpoint (it has: {available}). "
        "Use best, last or stage-<k>.")


def load_source(source: str, which: str = "best") -> Source:
    path = Path(source).expanduser()
    if not os.path.lexists(path):
        raise StagetrainError(
            f"strategy.source={source} does not exist. Give a stagetrain run directory, a checkpoint "
            "(.pt) or a model.safetensors file.")
    if path.is_dir():
        if not (path / "run.json").exists():
            raise StagetrainError(f"strategy.source={source} is a folder but not a stagetrain run directory (no run.json).")
        path = _resolve(path, which)
    data = read_source_file(path)
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".safetensors":
        src = _safetensors(path, data, digest)
    else:
        bare = _bare_state(data)
        src = Source(path, digest, None, bare) if bare is not None else Source(path, digest, *weights(ckpt.load(path)))
    bad = next((k for k, v in src.state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise StagetrainError(f"strategy.source={path}: its weight {bad} holds NaN or inf values; a run started "
                              "from it could not train. Use a checkpoint from before the weights diverged.")
    if src.arch is not None:  # a spec read from a file is data: checked before anything is built from it
        from stagetrain.nn.specfile import check_spec

        check_spec(src.arch, f"strategy.source={path}", weights=src.state)
    return src


def read_source_file(path: Path) -> bytes:
    """The bytes of a source file, through the file gate (``userfile``, kind "source"): a
    regular file within the source limit (16 GB, at most half of ``ulimit -v``), read in
    chunks, so nothing is reserved beyond what it holds; else a StagetrainError naming it."""
    return userfile.read_bytes(path, "strategy.source=", "source")


def check_dtypes(src: Source, own: dict[str, torch.Tensor]) -> None:
    """Refuse a bare file's weight whose dtype is not floating where the model's (``own``, under
    the file's key names) is. A file with an architecture is checked by ``check_spec``."""
    from stagetrain.nn.specfile import check_floats

    check_floats(own, src.state, f"strategy.source={src.path}")


def _safetensors(path: Path, data: bytes, digest: str) -> Source:
    from safetensors.torch import load

    try:
        meta = safetensors_metadata(io.BytesIO(data))
        state = load(data)  # the bytes read through the gate, not the path again
    except Exception as e:
        raise StagetrainError(f"strategy.source={path} is not a readable safetensors file ({e}).") from None
    try:
        arch = json.loads(meta["arch"]) if "arch" in meta else None
    except (ValueError, RecursionError, TypeError) as e:
        raise StagetrainError(f"strategy.source={path}: its 'arch' metadata is not valid JSON ({e}).") from None
    return Source(path, digest, arch, state)


HEADER_MAX = 100 * 1024**2  # safetensors' own bound on a header


def safetensors_metadata(f: BinaryIO) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file's header, read from ``f`` (at its start): an
    8-byte little-endian length, then that many bytes of JSON. ValueError when it is not one."""
    head = f.read(8)
    size = int.from_bytes(head, "little")
    if len(head) < 8 or not 0 < size <= HEADER_MAX:
        raise ValueError(f"its header size is {size:,}, not that of a safetensors header")
    body = f.read(size)
    if len(body) < size:
        raise ValueError(f"its header claims {size:,} bytes, more than the file holds")
    header = json.loads(body)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _bare_state(data: bytes) -> dict[str, torch.Tensor] | None:
    """A plain {name: tensor} dict (also under a 'state_dict' or 'model' key), or None
    (a stagetrain checkpoint, or not a weights file: ``ckpt.load`` says which)."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(raw, dict) or "format" in raw:
        return None
    for candidate in (raw, raw.get("state_dict"), raw.get("model")):
        if isinstance(candidate, dict) and candidate and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items()):
            return dict(candidate)
    return None


def _renamed(key: str, prefixes: dict[str, str]) -> str:
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old):
            return prefixes[old] + key[len(old):]
    return key


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" ... ({len(keys)} in all)" if len(keys) > 4 else "")


def load_bare(model: Any, src: Source, prefixes: dict[str, str], reuse_head: bool, arch: str,
              check_only: bool = False) -> None:
    """Load a bare state dict into ``model``: keys renamed by ``prefixes`` (old -> new
    prefix, ``strategy.source_keys``), then from the user module's names to the parts'
    (``model=custom``/``torchvision``); the head is left out unless ``reuse_head``. Refuses,
    naming the keys, when anything is missing, unexpected or of another shape."""
    from stagetrain.models.custom import native_prefixes, rename

    pairs = native_prefixes(model.arch) if model.arch.shared is not None else []
    back = [(new, old) for old, new in sorted(pairs, key=lambda p: -len(p[1]))]
    native = {}  # the model's key -> the file's key, for messages in the file's terms
    for key in src.state:
        renamed = _renamed(key, prefixes)
        native[rename(renamed, pairs) or renamed] = key
    _head_class_count(model, src, native, reuse_head)
    own = model.state_dict()
    check_dtypes(src, {native[k]: v for k, v in own.items() if k in native})
    keep = [k for k in native if reuse_head or not k.startswith("head.")]
    unexpected = [native[k] for k in keep if k not in own]
    missing = [rename(k, back) or k for k in own if k not in native and (reuse_head or not k.startswith("head."))
               and not k.endswith("num_batches_tracked")]
    shapes = [f"{native[k]} {list(src.state[native[k]].shape)} vs {list(own[k].shape)}"
              for k in keep if k in own and own[k].shape != src.state[native[k]].shape]
    if unexpected or missing or shapes:
        problems = "; ".join(f"{what}: {_listed(keys)}" for what, keys in (
            ("unexpected keys (in the file, not the model)", unexpected),
            ("missing keys (in the model, not the file)", missing),
            ("shape mismatches (file vs model)", shapes)) if keys)
        valid = [rename(k, back) or k for k in own if not k.endswith("num_batches_tracked")]
        raise StagetrainError(
            f"strategy.source={src.path} is not a stagetrain checkpoint but a bare state dict, and it does not "
            f"fit {arch} (a bare state dict has no architecture: model= gives it). {problems[0].upper() + problems[1:]}. The model's keys look like: {_listed(valid)}. Give the model= the "
            "file was saved from, or rename its keys with strategy.source_keys={old_prefix: new_prefix}"
            f"{'' if reuse_head else ' (the head is new: its keys are ignored)'}.")
    if not check_only:  # check_only: a model on the meta device, for the dry run's check
        model.load_state_dict({k: src.state[native[k]] for k in keep}, strict=False)


def _head_class_count(model: Any, src: Source, native: dict[str, str], reuse_head: bool) -> None:
    """head=reuse with a head whose output size is not this run's class count: say so."""
    if not reuse_head:
        return
    for key, file_key in native.items():
        if key.startswith("head.") and key.endswith("weight") and src.state[file_key].dim() == 2:
            own = model.state_dict().get(key)
            if own is not None and own.dim() == 2 and own.shape[0] != src.state[file_key].shape[0]:
                raise StagetrainError(
                    f"strategy.head=reuse needs the source's head to fit this run's classes, but {src.path}'s "
                    f"{file_key} has {src.state[file_key].shape[0]} outputs and the data has {own.shape[0]} classes. "
                    "Use strategy.head=new (a new head sized for the data).")

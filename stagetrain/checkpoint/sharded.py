"""Sharded checkpoints (``device.shard=fsdp``): torch.distributed.checkpoint (DCP) folders.

Within a sharded stage ``checkpoints/last.dcp/`` holds::

    __0_0.distcp, __1_0.distcp, ...   each rank's shards of the model, helper and optimizer state (DCP)
    .metadata                          DCP's index of every tensor's chunks (written by rank 0)
    state.pt                           the rest, in the ordinary checkpoint format: architecture, position,
                                       run state, scheduler, RNG, config, optimizer param groups
    manifest.json                      written last: format, world size, position, SHA-256 of every file

Writing is atomic: every rank writes into ``.last.dcp.tmp/`` and hashes its own file; once all
ranks' files are there rank 0 writes ``state.pt``, then the manifest (with each file's digest),
then renames the folder to ``last.dcp`` (the previous one becomes ``last-prev.dcp``). A failure
on rank 0 is broadcast, so every rank raises it (none waits in a collective). A folder without a
manifest, a file missing, one whose digest differs, an entry that is not a regular file (a
symbolic link, a FIFO), a manifest naming a path outside the folder or a world size its rank
files do not match, or an index (``.metadata``) pointing outside the ranks' files is refused
with one paragraph, and the previous checkpoint is used, as for a damaged ``last.pt``.

Reading trusts no pickle: DCP holds tensors only (a non-tensor entry is refused); its
``.metadata`` (a pickle) is read through the gate (``userfile``) and unpickled by
``_MetadataUnpickler``, which builds only DCP's own metadata classes, torch dtypes and
sizes and a path; the tensor files are checked against the manifest through the gate and
read by DCP with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import stat
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from stagetrain.checkpoint.io import _fsync_dir, atomic_write, load, save
from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError

FORMAT = "stagetrain-sharded-checkpoint"
MANIFEST, META = "manifest.json", "state.pt"
SUFFIX = ".dcp"
MAX_WORLD = 1 << 20  # ranks a manifest may name
_META_CLASSES = {("torch.distributed.checkpoint.metadata", n) for n in (
    "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "MetadataIndex",
    "StorageMeta", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath")}


def folder_of(path: Path) -> Path:
    """``checkpoints/last.pt`` -> ``checkpoints/last.dcp``: the sharded twin of a checkpoint path."""
    return path.with_suffix(SUFFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with userfile.open_file(path, "sharded checkpoint file", "source") as f:
        while chunk := f.read(userfile.CHUNK):
            h.update(chunk)
    return h.hexdigest()


def save_sharded(tensors: dict[str, Any], meta: dict[str, Any], path: Path, keep_previous: Path | None,
                 world: int) -> None:
    """Every rank calls this at the same point: DCP writes each rank's shards, rank 0 completes it."""
    import torch.distributed.checkpoint as dcp

    bad = [k for k, v in _flat(tensors).items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"a sharded checkpoint holds tensors only, not {bad[:3]}")
    tmp = path.parent / f".{path.name}.tmp"
    _agreed(lambda: shutil.rmtree(tmp) if tmp.exists() else None, path)  # a write a kill interrupted: never read
    try:
        dcp.save(tensors, checkpoint_id=str(tmp))
    except CheckpointException as e:  # raised on every rank alike
        raise StagetrainError(f"The sharded checkpoint {path} could not be written ({_cause(e)}); the previous "
                              "checkpoint is kept. Check the free space and permissions of the run directory.") from None
    digests = _rank_digests(tmp)  # each rank hashes its own file: rank 0 does not read the whole model
    _agreed(lambda: _complete(meta, tmp, path, keep_previous, world, digests), path)


def _rank_digests(tmp: Path) -> dict[str, str | None]:
    import torch.distributed as dist

    own = tmp / f"__{dist.get_rank()}_0.distcp"
    try:
        digest = _sha256(own)
    except StagetrainError:
        digest = None  # rank 0 refuses to complete the checkpoint, on every rank
    pairs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(pairs, (own.name, digest))
    return dict(pairs)


def _agreed(work: Any, path: Path) -> None:
    """``work`` on rank 0, its failure raised on every rank (never a rank left waiting in a collective)."""
    import torch.distributed as dist

    error = None
    if dist.get_rank() == 0:
        try:
            work()
        except StagetrainError as e:
            error = str(e)
        except OSError as e:
            from stagetrain.checkpoint.io import write_error

            error = str(write_error(path, "sharded checkpoint", e))
        except Exception as e:  # anything else still reaches every rank
            error = f"The sharded checkpoint {path} could not be written ({_cause(e)}); the previous one is kept."
    box = [error]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise StagetrainError(box[0])


def _complete(meta: dict[str, Any], tmp: Path, path: Path, keep_previous: Path | None, world: int,
              digests: dict[str, str | None]) -> None:
    """Rank 0, once every rank's shards are in ``tmp``: ``state.pt``, the manifest, the renames."""
    lost = sorted(name for name, digest in digests.items() if digest is None)
    if lost:
        raise StagetrainError(f"The sharded checkpoint {path} could not be written: {', '.join(lost[:3])} could "
                              "not be read back by its rank; the previous checkpoint is kept.")
    save(meta, tmp / META)
    files = sorted(p.name for p in tmp.iterdir() if p.is_file())
    manifest = {"format": FORMAT, "version": 1, "world_size": world, "position": meta["position"],
                "files": {name: digests.get(name) or _sha256(tmp / name) for name in files}}
    atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    if keep_previous is not None and path.exists():
        if keep_previous.exists():
            shutil.rmtree(keep_previous)
        os.replace(path, keep_previous)
    elif path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _cause(e: BaseException) -> str:
    """The first failure inside DCP's CheckpointException (one line), or the exception itself."""
    failures = getattr(e, "failures", None) or {}
    inner = next(iter(failures.values()), (e,))
    inner = inner[0] if isinstance(inner, tuple) else inner
    return f"{type(inner).__name__}: {str(inner).splitlines()[0] if str(inner) else ''}"[:300]


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    return {prefix.rstrip("."): obj}


def _refuse(path: Path, what: str) -> StagetrainError:
    return StagetrainError(
        f"Sharded checkpoint {path} is incomplete or corrupt: {what}. A sharded checkpoint counts only when "
        f"every rank's file and its {MANIFEST} (written last, with a SHA-256 of each file) are there and "
        "match; this one was not loaded. Do not train on it.")


def verify(path: Path) -> dict[str, Any]:
    """The manifest of a complete, untampered sharded checkpoint; StagetrainError otherwise."""
    if path.is_symlink():
        raise _refuse(path, "the folder is a symbolic link (a checkpoint folder written here never is)")
    if not (path / MANIFEST).exists():
        raise _refuse(path, f"it has no {MANIFEST} (a write that did not finish)")
    try:
        manifest = json.loads(userfile.read_bytes(path / MANIFEST, "sharded checkpoint manifest", "record"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _refuse(path, f"its {MANIFEST} is not valid JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    world = manifest.get("world_size") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(files, dict)
            or not all(isinstance(n, str) and isinstance(d, str) for n, d in files.items())
            or type(world) is not int or not 1 <= world <= MAX_WORLD):
        raise _refuse(path, f"its {MANIFEST} is not a stagetrain sharded-checkpoint manifest")
    odd = sorted(n for n in files if n != os.path.basename(n) or n in ("", ".", "..", MANIFEST))
    if odd:
        raise _refuse(path, f"its {MANIFEST} names {odd[0]!r}, not a file of the checkpoint folder")
    ranks = {f"__{r}_0.distcp" for r in range(world)}
    stray = sorted(n for n in files if n.endswith(".distcp") and n not in ranks)
    if stray:
        raise _refuse(path, f"its {MANIFEST} says {world} rank(s) wrote it but lists {stray[0]}")
    missing = sorted((ranks | {".metadata", META}) - set(files)) + sorted(n for n in files if not os.path.lexists(path / n))
    if missing:
        raise _refuse(path, f"{', '.join(missing[:5])}{' and more' if len(missing) > 5 else ''} missing")
    irregular = sorted(n for n in files if not stat.S_ISREG(os.lstat(path / n).st_mode))
    if irregular:
        raise _refuse(path, f"{irregular[0]} is not a regular file (a symbolic link, a FIFO or a folder)")
    wrong = [n for n, digest in files.items() if _sha256(path / n) != digest]
    if wrong:
        raise _refuse(path, f"the SHA-256 of {', '.join(sorted(wrong))} does not match the manifest")
    _metadata(path, ranks)  # its index read and checked too: a hostile one is refused here, not mid-resume
    return manifest


def load_meta(path: Path) -> dict[str, Any]:
    """The checked ``state.pt`` of a verified sharded checkpoint, marked with its folder."""
    state = load(path / META)
    from stagetrain.checkpoint.io import _check_belongs_to_run

    _check_belongs_to_run(path, state)
    state["sharded"] = str(path)
    return state


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, torch dtypes, sizes and paths; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _META_CLASSES:
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _metadata(path: Path, ranks: set[str] | None = None) -> Any:
    """DCP's ``.metadata`` of ``path``, read through the gate and unpickled by the allowlist; tensors only,
    each chunk inside one of the ranks' files of this folder (DCP would open any path it names)."""
    from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata

    data = userfile.read_bytes(path / ".metadata", "sharded checkpoint metadata", "source")  # grows with ranks
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # any unpickling failure: refused, nothing called
        raise _refuse(path, f".metadata was refused ({e}); nothing was executed from it") from None
    entries = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(entries, dict) or not all(isinstance(v, TensorStorageMetadata) for v in entries.values()):
        raise _refuse(path, ".metadata names entries that are not tensors")
    _check_chunks(path, metadata, ranks)
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    return metadata


def _check_chunks(path: Path, metadata: Any, ranks: set[str] | None) -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    if ranks is None:
        ranks = {p.name for p in path.glob("__*_0.distcp")}
    sizes: dict[str, int] = {}
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        raise _refuse(path, ".metadata has no index of where each tensor is stored")
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(info, _StorageInfo) or not isinstance(name, str) or name not in ranks:
            raise _refuse(path, f".metadata points at {name!r}, not at a rank's file of this folder")
        if name not in sizes:
            sizes[name] = os.lstat(path / name).st_size
        if not (isinstance(info.offset, int) and isinstance(info.length, int) and 0 <= info.offset
                and 0 <= info.length <= sizes[name] - info.offset):
            raise _refuse(path, f".metadata points past the end of {name}")


def _reader(path: Path, metadata: Any) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:  # never DCP's pickle.load
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def load_tensors(path: Path, targets: dict[str, Any]) -> None:
    """Fill ``targets`` (plain tensors or DTensor shards, any world size: DCP reshards) in place."""
    import warnings

    import torch.distributed.checkpoint as dcp

    metadata = _metadata(path)  # refused here, before DCP reads anything
    with warnings.catch_warnings():  # a single process: DCP says it assumes no process group
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            dcp.load(targets, storage_reader=_reader(path, metadata))
        except (CheckpointException, Exception) as e:  # a file that passed its digest yet does not read
            raise _refuse(path, f"DCP could not read it ({_cause(e)})") from None

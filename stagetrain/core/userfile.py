"""The one gate for files and folders a user hands us (sources, data, run directories read
by the report, config files): every such path is opened here and nowhere else.

A file passes when it is a regular file (a FIFO, device, socket or directory is refused
unread, without blocking), its size is within the limit of its kind, and it is not a
sparse file far larger than what it stores. The limits are fixed per kind of file (what a
run of stagetrain can use of it), lowered to half of the address-space limit when one is
set (``ulimit -v``): never taken from the momentarily free RAM. Reading never reserves
more than the file holds. Folders are walked with each real file once: a symbolic link is
followed once, a link loop is named, not followed again.

Every refusal is a StagetrainError naming the path, the setting it came from and the
cause. Torch-free to import.
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from stagetrain.core.errors import StagetrainError

KiB, MiB, GiB = 1024, 1024**2, 1024**3
# the most a file of each kind may hold; a run of stagetrain cannot use more of it
LIMITS = {
    "source": 16 * GiB,  # model weights: a checkpoint or safetensors file, read whole
    "data": 8 * GiB,  # one data file (IDX images, a corpus file, JSONL / CSV)
    "image": 64 * MiB,  # one image of an image folder
    "record": 64 * MiB,  # run.json, metrics.jsonl, summaries read back from a run directory
    "config": MiB,  # a YAML config file
}
SPARSE_FROM = 64 * MiB  # a larger file storing less than 1/SPARSE_RATIO of its size is refused
SPARSE_RATIO = 64
CHUNK = 16 * MiB
KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


def limit_for(kind: str) -> int:
    """The byte limit of ``kind``, at most half the address-space limit when one is set."""
    limit = LIMITS[kind]
    try:
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (OSError, ValueError):
        soft = resource.RLIM_INFINITY
    if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
        limit = min(limit, soft // 2)
    return limit


def _size(n: float) -> str:
    for unit, scale in (("GB", GiB), ("MB", MiB), ("KB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def _where(path: Path, what: str) -> str:
    """``what`` (the setting) and the path: "dataset.paths: a.txt", or "strategy.source=a.pt"
    when ``what`` ends with "="."""
    if what.endswith("="):
        return f"{what}{path}"
    return f"{what}: {path}" if what else str(path)


def _oserror(path: Path, what: str, e: OSError) -> StagetrainError:
    cause = e.strerror or str(e)
    if e.errno == 40:  # ELOOP
        cause = "a symbolic link that points back at itself (too many levels of symbolic links)"
    return StagetrainError(f"{_where(path, what)} cannot be read: {cause}.")


def check_stat(st: os.stat_result, path: Path, what: str, kind: str) -> None:
    """Refuse what is not a regular file of a size ``kind`` allows, naming it."""
    if not stat.S_ISREG(st.st_mode):
        name = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise StagetrainError(f"{_where(path, what)} is {name}, not a regular file; it was not read.")
    limit = limit_for(kind)
    if st.st_size > limit:
        raise StagetrainError(
            f"{_where(path, what)} is {_size(st.st_size)}, more than the {_size(limit)} {'an' if kind[0] in 'aeiou' else 'a'} {kind} file may have "
            f"here{' (half the address-space limit, ulimit -v)' if limit < LIMITS[kind] else ''}; it was not read.")
    stored = getattr(st, "st_blocks", None)
    if stored is not None and st.st_size > SPARSE_FROM and stored * 512 * SPARSE_RATIO < st.st_size:
        raise StagetrainError(
            f"{_where(path, what)} is a sparse file: {_size(st.st_size)} long but only {_size(stored * 512)} on "
            f"disk (mostly holes, not data); it was not read.")


def open_file(path: str | os.PathLike, what: str, kind: str) -> BinaryIO:
    """``path`` opened for binary reading after the checks above (the checks run on the opened
    file, so what is read is what was checked). The caller closes it."""
    path = Path(os.path.expanduser(str(path)))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the run
    except IsADirectoryError:
        raise StagetrainError(f"{_where(path, what)} is a folder, not a regular file; it was not read.") from None
    except FileNotFoundError:
        hint = " (a symbolic link whose target is missing)" if os.path.islink(path) else ""
        raise StagetrainError(f"{_where(path, what)} does not exist{hint}.") from None
    except OSError as e:
        raise _oserror(path, what, e) from None
    try:
        check_stat(os.fstat(fd), path, what, kind)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, what: str, kind: str) -> bytes:
    """The bytes of a checked file, read in chunks (nothing reserved beyond what it holds)."""
    with open_file(path, what, kind) as f:
        limit = limit_for(kind)
        parts, total = [], 0
        try:
            while chunk := f.read(CHUNK):
                total += len(chunk)
                if total > limit:  # grew while being read
                    raise StagetrainError(f"{_where(Path(path), what)} grew past {_size(limit)} while being read.")
                parts.append(chunk)
            return b"".join(parts)
        except OSError as e:
            raise _oserror(Path(path), what, e) from None
        except MemoryError:
            raise StagetrainError(f"{_where(Path(path), what)} ({_size(total)} read so far) does not fit in the "
                                  "memory this process may use.") from None


def read_text(path: str | os.PathLike, what: str, kind: str = "data") -> str:
    """A checked file's text; invalid UTF-8 is refused naming the byte offset."""
    data = read_bytes(path, what, kind)
    try:
        return data.decode("utf-8")
    except MemoryError:
        raise StagetrainError(f"{_where(Path(path), what)} ({_size(len(data))}) does not fit in the memory this "
                              "process may use once decoded.") from None
    except UnicodeDecodeError as e:
        p = Path(path)
        raise StagetrainError(
            f"{_where(p, what)} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}). stagetrain reads UTF-8 "
            f"only: convert it first, e.g. iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8.txt.") from None


def check_file(path: str | os.PathLike, what: str, kind: str) -> None:
    """Refuse ``path`` as ``open_file`` would, reading nothing: for files another library
    (torchvision) reads by name after this check."""
    open_file(path, what, kind).close()


def listing(folder: str | os.PathLike, what: str) -> tuple[list[Path], list[Path]]:
    """(sub-folders, other entries) directly in ``folder``, each sorted by name; a link to a
    folder counts as a folder. Other entries are not checked here: opening one does that."""
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        raise StagetrainError(f"{_where(root, what)} is not a folder.")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise _oserror(root, what, e) from None
    folders, others = [], []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError as e:
            raise _oserror(Path(entry.path), what, e) from None
        (folders if is_dir else others).append(Path(entry.path))
    return folders, others


def walk(folder: str | os.PathLike, what: str, inside: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """The files under ``folder`` (sorted, recursively), each real file once: a symbolic link to
    a folder is followed once; a link that leads back into a folder being walked (or into one
    of ``inside``: the folders ``folder`` is part of, e.g. a split folder) is a loop and is
    refused naming it."""
    root = Path(os.path.expanduser(str(folder)))
    outer = tuple(os.path.realpath(os.path.expanduser(str(p))) for p in inside)
    seen_files: set[str] = set()

    def visit(d: Path, stack: tuple[str, ...]) -> Iterator[Path]:
        real = os.path.realpath(d)
        if real in stack:
            raise StagetrainError(f"{_where(d, what)} is a symbolic link loop: it leads back to {real}, a folder "
                                  "it is inside. Remove the link; each image or file is read once.")
        folders, files = listing(d, what)
        for p, is_dir in sorted([*((p, True) for p in folders), *((p, False) for p in files)], key=lambda e: e[0].name):
            if is_dir:
                yield from visit(p, (*stack, real))
                continue
            target = os.path.realpath(p)
            if target in seen_files:
                continue  # the same file through another link: read once
            seen_files.add(target)
            yield p

    yield from visit(root, outer)

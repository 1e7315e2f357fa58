"""A sharded checkpoint (``checkpoints/last.dcp/``) under attack: damaged, tampered or hostile.

A real DCP checkpoint is written once per test by a one-process gloo group (no torchrun), then
each case damages a copy of it. Every case must end in one StagetrainError paragraph naming the
folder (never another exception), load nothing into the target, run no code (a marker file that
a hostile pickle would create never appears), and read no file outside the folder. A tampered
manifest is rewritten with matching digests where the case needs it: the digests catch damage,
the structural checks must catch a writer who lies.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from stagetrain.checkpoint import sharded
from stagetrain.checkpoint.resume import latest_state
from stagetrain.core.errors import StagetrainError
from stagetrain.runs.rundir import RunDir

SPEC = {"in_shape": [6], "blocks": [{"name": "block1", "type": "linear", "in": 6, "out": 5, "out_shape": [5]}],
        "head": {"in": 5, "out": 3}}
W = torch.arange(12.0).reshape(3, 4)



def _write(folder: Path, step: int = 7) -> None:
    tensors = {"model": {"model.w": W.clone()}, "optim": {"model.w": {"step": torch.tensor(3.0)}}}
    meta = {"arch": SPEC, "model": {}, "position": {"stage": 0, "stage_name": "s", "epoch": 1, "batch": 2,
                                                    "global_step": step}, "config_yaml": "", "run_state": {}}
    sharded.save_sharded(tensors, meta, folder / "last.dcp", folder / "last-prev.dcp", 1)


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/stagetrain-hostile-fsdp-pwned"


def _rehash(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in m["files"]}
    (d / "manifest.json").write_text(json.dumps(m))


def _manifest(change):
    def damage(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))
    return damage


def _index(change):
    """Rewrite DCP's .metadata (a pickle of DCP's own classes) with ``change`` applied, digests matching."""
    def damage(d: Path) -> None:
        md = sharded._metadata(d)
        for info in md.storage_data.values():
            change(info, d)
        (d / ".metadata").write_bytes(pickle.dumps(md))
        _rehash(d)
    return damage


def _replace(name: str, make):
    def damage(d: Path) -> None:
        (d / name).unlink()
        make(d / name, d)
    return damage


def _truncate(name: str, size: int, rehash: bool = False):
    def damage(d: Path) -> None:
        with open(d / name, "r+b") as f:
            f.truncate(size)
        if rehash:
            _rehash(d)
    return damage


def _hostile(name: str):
    def damage(d: Path) -> None:
        (d / name).write_bytes(pickle.dumps(_Boom()))
        _rehash(d)
    return damage


def _grow(d: Path) -> None:
    with open(d / "__0_0.distcp", "ab") as f:
        f.write(b"\0" * (8 << 20))


def _elsewhere(path: Path, d: Path) -> None:
    outside = d.parent / "outside.distcp"  # an identical copy of the good file, outside the folder
    shutil.copy(d.parent.parent / "last.dcp" / path.name, outside)
    os.symlink(outside, path)


CASES = {
    "rank file deleted": (lambda d: (d / "__0_0.distcp").unlink(), "__0_0.distcp missing"),
    ".metadata deleted": (lambda d: (d / ".metadata").unlink(), r"\.metadata missing"),
    "state.pt deleted": (lambda d: (d / "state.pt").unlink(), "state.pt missing"),
    "rank file truncated": (_truncate("__0_0.distcp", 10), "SHA-256 of __0_0.distcp does not match"),
    "rank file truncated, digests rewritten": (_truncate("__0_0.distcp", 10, True), "points past the end of __0_0"),
    "rank file oversized": (_grow, "SHA-256 of __0_0.distcp does not match"),
    ".metadata emptied, digests rewritten": (_truncate(".metadata", 0, True), r"\.metadata was refused"),
    ".metadata runs code, digests rewritten": (_hostile(".metadata"), r"posix\.system is not part"),
    "state.pt runs code, digests rewritten": (_hostile("state.pt"), "Nothing was executed from it"),
    "rank file a symlink to an identical copy": (_replace("__0_0.distcp", _elsewhere), "not a regular file"),
    "rank file a FIFO": (_replace("__0_0.distcp", lambda p, d: os.mkfifo(p)), "not a regular file"),
    ".metadata a FIFO": (_replace(".metadata", lambda p, d: os.mkfifo(p)), "not a regular file"),
    "manifest a FIFO": (_replace("manifest.json", lambda p, d: os.mkfifo(p)), "named pipe"),
    "manifest a JSON list": (lambda d: (d / "manifest.json").write_text("[1, 2]"), "not a stagetrain sharded"),
    "manifest lies: 2 ranks": (_manifest(lambda m: m.update(world_size=2)), "__1_0.distcp missing"),
    "manifest lies: 0 ranks": (_manifest(lambda m: m.update(world_size=0)), "not a stagetrain sharded"),
    "manifest lies: 10**9 ranks": (_manifest(lambda m: m.update(world_size=10**9)), "not a stagetrain sharded"),
    "manifest lies: world_size true": (_manifest(lambda m: m.update(world_size=True)), "not a stagetrain sharded"),
    "manifest lists a file outside": (_manifest(lambda m: m["files"].update({"../../etc/passwd": "0"})),
                                      "names '../../etc/passwd', not a file of the checkpoint"),
    "manifest lists a stray rank": (_manifest(lambda m: m["files"].update({"__5_0.distcp": "0"})),
                                    "1 rank.* lists __5_0.distcp"),
    ".metadata points outside the folder": (_index(lambda i, d: setattr(i, "relative_path", str(d.parent / "x"))),
                                            "points at .*, not at a rank's file of this folder"),
    ".metadata points past the end": (_index(lambda i, d: setattr(i, "length", 10**12)), "points past the end"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_or_hostile_sharded_checkpoint_is_refused_in_one_paragraph(one_rank, tmp_path, case, monkeypatch):
    damage, said = CASES[case]
    Path(MARKER).unlink(missing_ok=True)
    monkeypatch.chdir(tmp_path)
    _write(tmp_path)
    broken = tmp_path / "broken" / "last.dcp"
    broken.parent.mkdir()
    shutil.copytree(tmp_path / "last.dcp", broken)
    damage(broken)
    target = {"model": {"model.w": torch.zeros(3, 4)}}
    with pytest.raises(StagetrainError, match=said) as e:
        sharded.verify(broken)
        sharded.load_meta(broken)
        sharded.load_tensors(broken, target)
    assert "\n" not in str(e.value) and str(broken) in str(e.value)
    assert torch.equal(target["model"]["model.w"], torch.zeros(3, 4))  # nothing was loaded
    assert not Path(MARKER).exists()
    sharded.verify(tmp_path / "last.dcp")  # the original is untouched and still good


def test_resume_falls_back_from_a_hostile_metadata_with_matching_digests(one_rank, tmp_path, caplog):
    """The index is checked while choosing the checkpoint, so the run falls back instead of stopping."""
    Path(MARKER).unlink(missing_ok=True)
    rundir = RunDir(tmp_path)
    rundir.checkpoints.mkdir()
    _write(rundir.checkpoints, step=7)
    _write(rundir.checkpoints, step=9)
    _hostile(".metadata")(rundir.checkpoints / "last.dcp")
    state = latest_state(rundir)
    assert state["position"]["global_step"] == 7 and state["sharded"].endswith("last-prev.dcp")
    assert "posix.system is not part" in caplog.text and "Falling back" in caplog.text
    assert not Path(MARKER).exists()


def test_a_failed_write_is_one_paragraph_on_every_rank_and_keeps_the_previous_checkpoint(one_rank, tmp_path):
    """Rank 0's failure is broadcast (before: rank 0 raised and the others waited in a barrier forever)."""
    _write(tmp_path, step=7)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / ".last.dcp.tmp")  # shutil.rmtree refuses a symlink: an OSError on rank 0
    with pytest.raises(StagetrainError, match="sharded checkpoint") as e:
        _write(tmp_path, step=9)
    assert "\n" not in str(e.value)
    assert sharded.verify(tmp_path / "last.dcp")["position"]["global_step"] == 7
    (tmp_path / ".last.dcp.tmp").unlink()
    with pytest.raises(StagetrainError, match="could not be written .*KeyError"):  # any error, not only OSError
        sharded.save_sharded({"model": {"model.w": W}}, {"arch": SPEC}, tmp_path / "last.dcp", None, 1)
    assert sharded.verify(tmp_path / "last.dcp")["position"]["global_step"] == 7
    _write(tmp_path, step=9)
    assert sharded.verify(tmp_path / "last.dcp")["position"]["global_step"] == 9

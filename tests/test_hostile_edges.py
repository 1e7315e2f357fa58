"""Hostile edges of the trust boundary, two tables.

``REPORT``: ``stagetrain-report`` over a run directory whose run.json or metrics.jsonl is a
FIFO, a device, too large, binary or nested beyond reason, or whose text carries terminal
control sequences: the damaged run is listed (unreadable, with the reason), the report never
hangs, no ESC byte reaches the output, and the run directories are left as they were.

``REFUSED``: command lines refused with a non-zero exit and exactly one ``Error:`` paragraph,
no traceback, nothing left behind: ``+key``/``++key`` on keys the schema lacks, a run or sweep
directory on /proc, /sys or /dev, a full disk, resume=auto on a read-only run directory, an
Optuna storage that is not a database. Every row runs the real CLI in-process.

The full disk is a real tmpfs of 64 KB filled to the last byte (``mount -t tmpfs``), refused
before anything is written, and a tmpfs of 4 inodes, where Hydra's own first writes (the
job's log, ``.hydra/config.yaml``) fail with ENOSPC; the read-only run directory is a read-only bind mount (``mount -o remount,bind,ro``), since
tests run as root, where ``chmod a-w`` stops no write. Without the right to mount, those
rows are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile import TINY, assert_refused, deadline, fingerprint, good_run, run_main  # noqa: F401 - good_run: the session's real run

from stagetrain.report import command as report

ESC, CSI8 = "\x1b", "\x9b"


# ------------------------------------------------------------------ the report table
def _fifo(name: str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)
    return mutate


def _link(name: str, target: str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        (run / name).unlink()
        (run / name).symlink_to(target)
    return mutate


def _huge(name: str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        with open(run / name, "r+b") as f:
            f.truncate(65 * 1024**2)  # a hole: 65 MB long, nothing stored
    return mutate


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        (run / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return mutate


def _edit(config: dict | None = None, **changes: object) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        info = json.loads((run / "run.json").read_text())
        info.update(changes)
        for section, values in (config or {}).items():
            info["config"].setdefault(section, {}).update(values) if isinstance(values, dict) else \
                info["config"].__setitem__(section, values)
        (run / "run.json").write_text(json.dumps(info))
    return mutate


def _metrics_line(line: bytes) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        with open(run / "metrics.jsonl", "ab") as f:
            f.write(line + b"\n")
    return mutate


NESTED_OBJECT = '{"a":' * 200_000 + "1" + "}" * 200_000
# (id, what is done to the damaged run, extra report arguments, text the output must hold)
REPORT: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    ("run.json is a FIFO", _fifo("run.json"), [], "named pipe (FIFO)"),
    ("run.json links to /dev/zero", _link("run.json", "/dev/zero"), [], "character device"),
    ("run.json links to /dev/null", _link("run.json", "/dev/null"), ["--plot", "p.png"], "character device"),
    ("run.json is 65 MB", _huge("run.json"), [], "more than the 64 MB a record file"),
    ("run.json is a PNG", _write("run.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), [], "UnicodeDecodeError"),
    ("run.json is an object nested 200,000 deep", _write("run.json", NESTED_OBJECT), [], "RecursionError"),
    ("run.json links to a missing file", _link("run.json", "gone.json"), [], "does not exist"),
    ("metrics.jsonl is a FIFO + --curves", _fifo("metrics.jsonl"), ["--curves", "c.png"], "named pipe (FIFO)"),
    ("metrics.jsonl links to /dev/zero + --curves", _link("metrics.jsonl", "/dev/zero"), ["--curves", "c.png"],
     "character device"),
    ("metrics.jsonl is 65 MB + --curves", _huge("metrics.jsonl"), ["--curves", "c.png"], "more than the 64 MB"),
    ("metrics.jsonl has a line nested 200,000 deep + --curves", _metrics_line(NESTED_OBJECT.encode()),
     ["--curves", "c.png"], "RecursionError"),
    ("metrics.jsonl is binary + --curves", _write("metrics.jsonl", bytes(range(256)) * 8), ["--curves", "c.png"],
     "UnicodeDecodeError"),
    ("error clears the screen", _edit(status="failed", error="\x1b[2J\x1b[H\x1b[31mboom"), [], "failed:"),
    ("error sets the window title (OSC)", _edit(status="failed", error="\x1b]0;owned\x07title"), [], "title"),
    ("error has a carriage return", _edit(status="failed", error="real\rfake"), [], "real?fake"),
    ("strategy is an OSC 8 hyperlink", _edit(strategy="\x1b]8;;http://x.invalid\x1b\\click\x1b]8;;\x1b\\"), [],
     "click"),
    ("stop_reason has an 8-bit CSI", _edit(stop_reason="\x9b2Jepochs"), [], "epochs"),
    ("config string has ESC", _edit(config={"optim": {"name": "\x1b[5madamw"}}), [], "adamw"),
    ("config key has ESC", _edit(config={"optim": {"\x1b[31mlr2": 1}}), [], "lr2"),
    ("status is Rich markup", _edit(status="[link=http://x.invalid]failed[/link]"), [], "[link=http://x.invalid]"),
    ("config value with ESC + --group-by", _edit(config={"train": {"epochs": "\x1b[1m9"}}),
     ["--group-by", "strategy,train.epochs"], "runs"),
    ("config value with ESC + --markdown", _edit(config={"optim": {"name": "\x1b[5madamw"}}), ["--markdown", "t.md"],
     "adamw"),
]


def test_the_report_table_has_distinct_cases():
    assert len({c[0] for c in REPORT}) == len(REPORT) >= 20


@pytest.mark.parametrize("case", REPORT, ids=[c[0] for c in REPORT])
def test_report_lists_a_hostile_run_and_never_passes_control_sequences(case, good_run, tmp_path, monkeypatch,  # noqa: F811
                                                                         capsys):
    _, mutate, args, expected = case
    monkeypatch.chdir(tmp_path)
    shutil.copytree(good_run, tmp_path / "ok")
    shutil.copytree(good_run, tmp_path / "damaged")
    mutate(tmp_path / "damaged")
    before = {name: fingerprint(tmp_path / name) for name in ("ok", "damaged")}
    with deadline(60):
        code = report.main(["ok", "damaged", *args])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 0, text
    assert "Traceback" not in text
    assert ESC not in text and CSI8 not in text, repr(text)
    assert expected in text, text
    assert "2 runs" in text, "both runs must be in the report"
    for flag, name in zip(args, args[1:], strict=False):
        if flag in ("--markdown", "--csv"):
            assert ESC not in (tmp_path / name).read_text()
    assert {name: fingerprint(tmp_path / name) for name in ("ok", "damaged")} == before


def test_a_run_directory_named_with_escapes_is_printed_without_them(good_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "run\x1b[2J\x1b]0;x\x07name"
    shutil.copytree(good_run, bad)
    _edit(status="failed", error="broken")(bad)
    assert report.main([str(tmp_path)]) == 0
    text = "".join(capsys.readouterr())
    assert ESC not in text and "failed: " in text and "name: broken" in text, repr(text)


# ------------------------------------------------------------------ the refused table
def _mount(*args: str) -> str | None:
    """Run mount; the reason it failed, or None."""
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount exited {proc.returncode}")


@pytest.fixture(scope="session")
def places(tmp_path_factory, good_run) -> Iterator[dict[str, Path | str]]:  # noqa: F811
    """``full``: a 64 KB tmpfs filled to the last byte; ``ro``: a read-only bind mount holding a
    completed and a stopped run and an Optuna database; files for the Optuna rows. A place
    that cannot be mounted maps to the reason (its rows are skipped)."""
    base = tmp_path_factory.mktemp("edges")
    out: dict[str, Path | str] = {"base": base}
    (base / "text.db").write_text("not a database\n")
    (base / "folder.db").mkdir()
    os.mkfifo(base / "fifo.db")
    src = base / "ro-src"
    shutil.copytree(good_run, src / "run")
    shutil.copytree(good_run, src / "stopped")
    _edit(status="stopped")(src / "stopped")
    sqlite3.connect(src / "optuna.db").execute("create table t(x)").connection.commit()
    mounted = []
    full = base / "full"
    full.mkdir()
    why = _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full))
    if why is None:
        mounted.append(full)
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # written until the disk is full (ENOSPC)
            while os.write(fd, b"\0" * 512):
                pass
        os.close(fd)
        out["full"] = full
    else:
        out["full"] = f"cannot mount a tmpfs to fill ({why})"
    ino = base / "ino"  # bytes to spare, but only 3 files: Hydra's own writes hit ENOSPC
    ino.mkdir()
    why = _mount("-t", "tmpfs", "-o", "size=4m,nr_inodes=4", "tmpfs", str(ino))
    if why is None:
        mounted.append(ino)
    out["ino"] = ino if why is None else f"cannot mount a tmpfs with 4 inodes ({why})"
    ro = base / "ro"
    ro.mkdir()
    why = _mount("--bind", str(src), str(ro))
    if why is None:
        mounted.append(ro)
        why = _mount("-o", "remount,bind,ro", str(ro))
    out["ro"] = ro if why is None else f"cannot make a read-only bind mount ({why})"
    yield out
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def workdir(tmp_path, good_run, monkeypatch) -> Path:  # noqa: F811
    shutil.copytree(good_run, tmp_path / "existing", symlinks=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    return tmp_path


OPTUNA = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.direction=maximize",
          "hydra.sweep.dir=sweep", *TINY[:3]]
DID_YOU_MEAN = "Did you mean"
# (command line, fragments of the one Error: paragraph); {name} is a path of ``places``
REFUSED: list[tuple[list[str], list[str]]] = [
    # ---- +key / ++key on keys the schema lacks
    (["+train.foo=1", "dry_run=true"], ["'train.foo'", "+train.foo=", "Valid keys of train"]),
    (["+foo=1", "dry_run=true"], ["'foo'", "stagetrain reads only"]),
    (["+model.bar=2", "dry_run=true"], ["'model.bar'", "Valid keys of model"]),
    (["++optim.nope=1", "dry_run=true"], ["'optim.nope'", "++optim.nope="]),
    (["+train.epoch=3", "dry_run=true"], ["'train.epoch'", "Did you mean 'train.epochs'?"]),
    (["++optim.lrr=0.1", "dry_run=true"], ["'optim.lrr'", "Did you mean 'optim.lr'?"]),
    (["+dataset.roo=x", "dry_run=true"], ["'dataset.roo'", "Did you mean 'dataset.root'?"]),
    (["strategy=layerwise", "++strategy.objectiv=x", "dry_run=true"], ["Did you mean 'strategy.objective'?"]),
    (["++devic=1", "dry_run=true"], ["'devic'", "Did you mean 'device'?"]),
    (["+checkpoint.every_step=5", "dry_run=true"], ["Did you mean 'checkpoint.every_steps'?"]),
    (["-m", "seed=0,1", "+train.foo=1", "dry_run=true"], ["'train.foo'"]),
    # ---- a run or sweep directory on a kernel or device file system
    ([*TINY, "hydra.run.dir=/proc/self"], ["hydra.run.dir=/proc/self", "proc file system"]),
    ([*TINY, "hydra.run.dir=/proc/self/fd"], ["hydra.run.dir=/proc/self/fd", "proc file system"]),
    ([*TINY, "hydra.run.dir=/proc/self/new_run"], ["proc file system"]),
    ([*TINY, "hydra.run.dir=/sys/kernel"], ["hydra.run.dir=/sys/kernel", "sysfs"]),
    ([*TINY, "hydra.run.dir=/dev"], ["hydra.run.dir=/dev", "devtmpfs"]),
    (["-m", *TINY, "seed=0,1", "hydra.sweep.dir=/proc/self/sweep"], ["hydra.sweep.dir=/proc/self/sweep", "proc"]),
    # ---- a full disk (a 64 KB tmpfs filled to the last byte)
    ([*TINY, "hydra.run.dir={full}/run"], ["hydra.run.dir=", "0 KB free", "free some disk space"]),
    (["-m", *TINY, "seed=0,1", "hydra.sweep.dir={full}/sweep"], ["hydra.sweep.dir=", "0 KB free"]),
    # ---- a disk that fills as Hydra writes .hydra/ and the job's log (a tmpfs of 4 inodes)
    ([*TINY, "hydra.run.dir={ino}/run"], ["Could not write", ".hydra/config.yaml: No space left on device"]),
    (["-m", *TINY, "seed=0,1", "hydra.sweep.dir={ino}/sweep"], ["stagetrain.log: No space left on device"]),
    # ---- resume on a read-only run directory (a read-only bind mount)
    ([*TINY, "hydra.run.dir={ro}/stopped", "resume=auto"], ["read-only file system", "cp -r"]),
    ([*TINY, "hydra.run.dir={ro}/run", "resume=auto"], ["read-only file system"]),
    ([*TINY, "resume={ro}/stopped"], ["read-only file system"]),
    # ---- Optuna storage that is not a database
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:///{base}/text.db"], ["text.db is not a SQLite database"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:///{base}/folder.db"], ["folder.db is a folder"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:///{base}/fifo.db"], ["fifo.db is a named pipe"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:////dev/zero"], ["/dev/zero is a character device"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:///{base}/text.db/optuna.db"], ["text.db is not a folder"]),
    ([*OPTUNA, "hydra.sweeper.storage=notaurl"], ["hydra.sweeper.storage=notaurl is not a database URL"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite://optuna.db"], ["names a host", "sqlite:///optuna.db"]),
    ([*OPTUNA, "hydra.sweeper.storage=mysql+nodriver://h/db"], ["no database driver"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:///{ro}/optuna.db"], ["read-only file system"]),
    ([*OPTUNA, "hydra.sweeper.storage=sqlite:///{ro}/new/optuna.db"], ["cannot be created", "read-only"]),
]


def _id(args: list[str]) -> str:
    return " ".join(a for a in args if a not in TINY and a not in OPTUNA[:-3]) or "tiny"


def test_the_refused_table_has_distinct_rows():
    assert len({_id(a) for a, _ in REFUSED}) == len(REFUSED) >= 25


@pytest.mark.parametrize("args,expected", REFUSED, ids=[_id(a) for a, _ in REFUSED])
def test_hostile_edge_is_refused_cleanly(args, expected, places, workdir, capsys):
    needed = {name for name in ("full", "ino", "ro", "base") if any(f"{{{name}}}" in a for a in args)}
    for name in needed:
        if isinstance(places[name], str):
            pytest.skip(places[name])
    if "hydra/sweeper=optuna" in args:
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs pip install 'stagetrain[optuna]'")
    args = [a.format(**places) for a in args]
    watched = [workdir, *(Path(places[n]) for n in needed)]
    before = [fingerprint(p) for p in watched]
    with deadline(120):
        code = run_main([*args, "progress=off", "plots=false", "device=cpu", "device.threads=1"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert_refused(code, text, [e.format(**places) for e in expected])
    assert [fingerprint(p) for p in watched] == before, "a refused input changed or left files behind"

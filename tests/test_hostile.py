"""Hostile and careless inputs, one table: every row is refused with a non-zero exit and one
``Error:`` paragraph naming the key, path or file, no traceback, nothing left behind, and
no change to any run directory that was there before (the working directory, with a
completed run in it, is fingerprinted before and after: content, mtimes, links).

Rows run in-process through the real ``stagetrain.app.cli.main`` (a fresh interpreter per row
would spend seconds importing); the inputs that need files (damaged IDX data, crafted
checkpoints, a FIFO, a YAML alias bomb) are made once per session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_idx_images, write_idx
from hostile import TINY, assert_refused, fingerprint, good_run, idx_root, run_main  # noqa: F401 - good_run: a fixture

from stagetrain import checkpoint as ckpt

TRAIN = ["strategy=scratch", "train.epochs=1", "model.widths=[8]"]  # what a row trains if it slips through
FT = ["strategy=finetune", "train.epochs=1"]
NAN_KEYS = [  # every float a user can set, with what selects it
    (["optim.lr"], []), (["optim.weight_decay"], []), (["optim.momentum"], ["optim.name=sgd"]),
    (["sched.gamma"], ["sched.name=step"]), (["dataset.val_fraction"], []), (["dataset.labeled_fraction"], []),
    (["model.dropout"], []), (["dataset.noise"], ["dataset=synthetic"]),
    (["strategy.noise"], ["strategy=grow"]), (["strategy.lr_after_growth"], ["strategy=grow"]),
    (["strategy.width_factor"], ["strategy=grow"]), (["strategy.flop_budget"], ["strategy=grow"]),
    (["strategy.complexity_penalty"], ["strategy=grow"]),
    (["strategy.ft_lr_factor"], ["strategy=finetune", "strategy.source=random"]),
    (["strategy.lora.alpha"], ["strategy=finetune", "strategy.source=random"]),
    (["strategy.lr"], ["strategy=finetune", "strategy.source=random"]),
    (["strategy.rbm_lr"], ["strategy=layerwise"]), (["strategy.finetune.lr"], ["strategy=layerwise"]),
    (["model.mlp_ratio"], ["model=transformer"]), (["model.dropout"], ["model=cnn"]),
    (["strategy.lr_factor"], ["strategy=finetune", "strategy.source=random"]),
    (["strategy.finetune.probe_l2"], ["strategy=layerwise"]),
]
CASES: list[tuple[list[str], list[str]]] = []
for (key,), extra in NAN_KEYS:
    CASES.append(([*extra, f"{key}=nan", "dry_run=true"], [f"{key}=nan", "finite"]))
for (key,), extra in NAN_KEYS[:12]:
    CASES.append(([*extra, f"{key}=inf", "dry_run=true"], [f"{key}=inf", "finite"]))
for (key,), extra in NAN_KEYS[:6]:
    CASES.append(([*extra, f"{key}=-inf", "dry_run=true"], [f"{key}=-inf", "finite"]))
CASES += [
    (["strategy=layerwise", "strategy.noise=[0.1,nan]", "dry_run=true"], ["strategy.noise[1]=nan"]),
    # ---- ranges
    (["sched.name=step", "sched.gamma=-1", "dry_run=true"], ["sched.gamma=-1.0", "(0, 1]"]),
    (["sched.name=step", "sched.gamma=0", "dry_run=true"], ["sched.gamma=0", "(0, 1]"]),
    (["sched.name=step", "sched.gamma=1.5", "dry_run=true"], ["sched.gamma=1.5", "(0, 1]"]),
    (["optim.name=sgd", "optim.momentum=-1", "dry_run=true"], ["optim.momentum=-1.0", "[0, 1)"]),
    (["optim.momentum=1", "dry_run=true"], ["optim.momentum=1", "[0, 1)"]),
    (["seed=-1", "dry_run=true"], ["seed=-1", "[0, 4294967295]"]),
    (["seed=4294967296", "dry_run=true"], ["seed=4294967296", "[0, 4294967295]"]),
    (["seed=99999999999999999999", "dry_run=true"], ["seed=99999999999999999999"]),
    (["model.dropout=1", "dry_run=true"], ["model.dropout=1", "[0, 1)"]),
    (["model.dropout=-0.1", "dry_run=true"], ["model.dropout=-0.1", "[0, 1)"]),
    (["dataset=synthetic", "dataset.noise=-1", "dry_run=true"], ["dataset.noise=-1", ">= 0"]),
    (["strategy=grow", "strategy.noise=-0.5", "dry_run=true"], ["strategy.noise=-0.5", ">= 0"]),
    (["dataset=synthetic", "dataset.num_classes=1", "dry_run=true"], ["dataset.num_classes=1", "[2, 100000]"]),
    (["dataset=synthetic", "dataset.num_classes=600", "dry_run=true"], ["dataset.num_classes=600", "samples"]),
    (["dataset=synthetic", "dataset.num_classes=200000", "dry_run=true"], ["dataset.num_classes=200000"]),
    (["train.batch_size=1", "model.bn=true", "dry_run=true"], ["train.batch_size=1", "model.bn=true"]),
    (["model=cnn", "train.batch_size=1", "dry_run=true"], ["train.batch_size=1", "batch normalization"]),
    (["model=resnet", "train.batch_size=1", "dry_run=true"], ["train.batch_size=1", "batch normalization"]),
    (["train.batch_size=0", "dry_run=true"], ["train.batch_size=0", "> 0"]),
    (["train.batch_size=-5", "dry_run=true"], ["train.batch_size=-5", "> 0"]),
    (["train.epochs=0", "dry_run=true"], ["train.epochs=0", "> 0"]),
    (["optim.lr=0", "dry_run=true"], ["optim.lr=0", "> 0"]),
    (["optim.lr=-0.001", "dry_run=true"], ["optim.lr=-0.001", "> 0"]),
    (["strategy=finetune", "strategy.source=random", "strategy.lr_decay=2", "dry_run=true"],
     ["strategy.lr_decay=2", "(0, 1]"]),
    (["strategy=finetune", "strategy.source=random", "strategy.lora.alpha=-1", "dry_run=true"],
     ["strategy.lora.alpha=-1"]),
    (["strategy=finetune", "strategy.source=random", "strategy.pretrain.noise=1.5", "dry_run=true"],
     ["strategy.pretrain.noise=1.5"]),
    (["strategy=grow", "strategy.lr_after_growth=-1", "dry_run=true"], ["strategy.lr_after_growth=-1"]),
    (["sched.warmup_epochs=-1", "dry_run=true"], ["sched.warmup_epochs=-1"]),
    (["checkpoint.every_steps=-1", "dry_run=true"], ["checkpoint.every_steps=-1"]),
    (["strategy=layerwise", "strategy.finetune.head_probe=newton", "dry_run=true"],
     ["strategy.finetune.head_probe", "lbfgs"]),
    (["strategy=finetune", "strategy.source=random", "strategy.lr_factor=0", "dry_run=true"], ["strategy.lr_factor=0"]),
    (["strategy=finetune", "strategy.source=random", "strategy.mode=gradual_unfreeze", "train.epochs=2",
      "dry_run=true"], ["strategy.mode=gradual_unfreeze", "it has 2", "more than 3 epochs"]),
    # ---- tune.grid: refused before any trial trains (braces doubled: rows are format strings)
    ([*TRAIN, "tune.grid={{seed:[0,1]}}"], ["tune.grid key 'seed'", "cannot be searched"]),
    ([*TRAIN, "tune.grid={{dataset.labeled_fraction:[0.1,1.0]}}"], ["dataset.labeled_fraction", "cannot be searched"]),
    ([*TRAIN, "tune.grid={{optim.lrr:[0.1]}}"], ["'optim.lrr'", "not a setting of this run"]),
    ([*TRAIN, "tune.grid=3"], ["tune.grid=3", "mapping"]),
    ([*TRAIN, "tune.grid={{optim.weight_decay:[]}}"], ["tune.grid.optim.weight_decay", "non-empty list"]),
    ([*TRAIN, "tune.grid={{train.batch_size:[32,big]}}"], ["tune.grid.train.batch_size", "'big'"]),
    ([*TRAIN, "tune.grid={{optim.weight_decay:[0,nan]}}"], ["tune.grid.optim.weight_decay[1]=nan", "finite"]),
    ([*TRAIN, "tune.grid={{train.epochs:[0]}}"], ["train.epochs=0", "> 0"]),
    # ---- sizes: refused before anything is allocated, with the numbers
    (["model.widths=[1000000000]", "dry_run=true"], ["model.widths[0]=1000000000", "at most 1,000,000"]),
    ([*TRAIN, "model.widths=[1000000000]"], ["model.widths[0]=1000000000", "at most 1,000,000"]),
    (["model.widths=[1000000,1000000]", "dry_run=true"], ["1,000,076,000,010 parameters"]),
    ([*TRAIN, "model.widths=[100000,100000,100000]"], ["parameters, more than stagetrain runs"]),
    (["model=cnn", "model.channels=[100000,100000]", "dry_run=true"], ["model=cnn", "parameters"]),
    (["dataset=synthetic", "dataset.shape=[3,64,64]", "dataset.n_train=20000", "model=cnn",
      "model.channels=[4096,4096,4096]", "train.batch_size=20000", "dry_run=true"],  # about 1.3 TB
     ["would need about", "available host memory", "activations of a batch of"]),
    (["dataset=synthetic", "dataset.shape=[1,20000,20000]", "dry_run=true"], ["dataset=synthetic would need", "GB"]),
    ([*TRAIN, "dataset=synthetic", "dataset.shape=[1,20000,20000]"], ["dataset=synthetic would need", "GB"]),
    ([*TRAIN, "dataset=synthetic", "dataset.shape=[3,1000,1000]", "dataset.n_train=100000"],
     ["100,500 samples of shape [3, 1000, 1000]"]),
    (["dataset=synthetic", "dataset.n_train=1000000000", "dry_run=true"], ["dataset.n_train=1000000000"]),
    (["model=transformer", "model.d_model=2000000", "dry_run=true"], ["model.d_model=2000000"]),
    (["model=resnet", "model.stem_channels=2000000", "dry_run=true"], ["model.stem_channels=2000000"]),
    (["strategy=grow", "strategy.widths=[[16],[2000000]]", "dry_run=true"], ["strategy.widths[1][0]=2000000"]),
    (["strategy=grow", "strategy.widths=[[16],[300000,300000]]", "dry_run=true"], ["parameters"]),
    (["dataset=synthetic", "dataset.shape=[1,1,2000000]", "dry_run=true"], ["dataset.shape[2]=2000000"]),
]


def _files(session: Path) -> dict[str, Path]:
    """Damaged IDX roots, crafted sources, a FIFO, an alias bomb: made once, outside any workdir."""
    made = {"session": session}
    made.update(_idx_roots(session / "idx"))
    made.update(_sources(session / "src"))
    bomb = session / "conf" / "experiment"
    bomb.mkdir(parents=True)
    lines = ["# @package _global_", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (bomb / "bomb.yaml").write_text("\n".join(lines) + "\n")
    (bomb / "huge.yaml").write_text("# @package _global_\nseed: 1\n" + "# padding\n" * 200_000)
    (bomb / "cycle.yaml").write_text("# @package _global_\nx: &x [1, *x]\n")
    return made


def _idx_roots(base: Path) -> dict[str, Path]:
    def mk(name: str, mutate) -> Path:
        return idx_root(base, name, mutate)

    def swap(raw: Path, a: str, b: str) -> None:
        ta, tb = (raw / a).read_bytes(), (raw / b).read_bytes()
        (raw / a).write_bytes(tb)
        (raw / b).write_bytes(ta)

    def labels(split: str, n: int, bad: int | None = None):
        def mutate(raw: Path) -> None:
            y = make_idx_images(n, 0, 0)[1]
            if bad is not None:
                y[3] = bad
            write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        return mutate

    tr, trl = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    return {f"idx_{k}": mk(k, m) for k, m in {
        "truncated": lambda raw: (raw / tr).write_bytes((raw / tr).read_bytes()[:1000]),
        "magic": lambda raw: (raw / tr).write_bytes(b"\x00\x00\x09\x03" + (raw / tr).read_bytes()[4:]),
        "swapped": lambda raw: swap(raw, tr, trl),
        "swapped_test": lambda raw: swap(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "fewer_labels": labels("train", 50),
        "more_labels": labels("train", 70),
        "test_counts": labels("t10k", 20),
        "label_200": labels("train", 60, 200),
        "test_label_10": labels("t10k", 30, 10),
        "empty_labels": lambda raw: (raw / trl).write_bytes(b""),
        "header_only": lambda raw: (raw / trl).write_bytes(b"\0\0\x08\x01\xff\xff\xff\xff"),
        "wrong_shape": lambda raw: write_idx(raw / tr, torch.zeros(60, 32, 32)),
        "no_labels": lambda raw: (raw / trl).unlink(),
    }.items()}


def _sources(base: Path) -> dict[str, Path]:
    """Source files for strategy=finetune: crafted checkpoints with valid digests, and worse."""
    from safetensors.torch import save_file

    base.mkdir(parents=True)
    run = base / "run"
    assert run_main([*TINY, f"hydra.run.dir={run}"]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    out: dict[str, Path] = {}

    def crafted(name: str, arch: object) -> None:
        s = {**state, "arch": arch}
        s["sha256"] = ckpt.digest(s)  # an altered checkpoint with a recomputed digest
        torch.save(s, base / f"{name}.pt")
        out[f"src_{name}"] = base / f"{name}.pt"

    spec = state["arch"]
    crafted("arch_list", [spec])
    crafted("arch_no_head", {k: v for k, v in spec.items() if k != "head"})
    crafted("arch_bad_act", {**spec, "blocks": [{**spec["blocks"][0], "act": "swish9"}]})
    crafted("arch_huge", {**spec, "blocks": [{**spec["blocks"][0], "out": 10**9}]})
    crafted("arch_many_blocks", {**spec, "blocks": [{**spec["blocks"][0], "name": f"b{i}"} for i in range(5_000)]})
    crafted("arch_bad_type", {**spec, "blocks": [{**spec["blocks"][0], "type": "rootkit"}]})
    crafted("arch_bad_shape", {**spec, "in_shape": [-1, 8, 8]})
    crafted("arch_string_width", {**spec, "blocks": [{**spec["blocks"][0], "out": "wide"}]})
    crafted("arch_params", {**spec, "blocks": [{**spec["blocks"][0], "out": 900_000},
                                               {**spec["blocks"][0], "name": "b2", "in": 900_000, "out": 900_000}]})
    nan_model = {k: v.clone() for k, v in state["model"].items()}
    first = next(iter(nan_model))
    nan_model[first].view(-1)[0] = float("nan")
    s = {**state, "model": nan_model}
    s["sha256"] = ckpt.digest(s)
    torch.save(s, base / "nan_weights.pt")
    torch.save(nan_model, base / "nan_bare.pth")  # a bare state dict (no architecture)
    out.update(src_nan_weights=base / "nan_weights.pt", src_nan_bare=base / "nan_bare.pth")
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    save_file({**tensors, first: torch.full_like(tensors[first], float("inf"))}, str(base / "inf.safetensors"),
              metadata={"arch": json.dumps(spec)})
    out["src_inf_safetensors"] = base / "inf.safetensors"
    for name, meta in {"st_bad_json": "{not json", "st_huge": json.dumps({**spec, "head": {"in": 8, "out": 10**9}})}.items():
        save_file(tensors, str(base / f"{name}.safetensors"), metadata={"arch": meta})
        out[f"src_{name}"] = base / f"{name}.safetensors"
    for name, data in {"empty.pt": b"", "garbage.pt": os.urandom(4096), "text.pt": b"hello world\n",
                       "garbage.safetensors": os.urandom(64)}.items():
        (base / name).write_bytes(data)
        out["src_" + name.replace(".", "_")] = base / name
    os.mkfifo(base / "fifo.pt")
    out["src_fifo"] = base / "fifo.pt"
    with open(base / "sparse.pt", "wb") as f:
        f.truncate(40 * 1024**3)  # 40 GB that take no space
    out["src_sparse"] = base / "sparse.pt"
    loop = base / "loop_run"
    shutil.copytree(run, loop)
    (loop / "checkpoints" / "best.pt").unlink(missing_ok=True)
    (loop / "checkpoints" / "best.pt").symlink_to("best.pt")
    out["src_loop_run"] = loop
    (base / "norun").mkdir()
    out["src_norun"] = base / "norun"
    return out


CD = ["--config-dir", "{session}/conf"]
IDX = [*TRAIN, "dataset=mnist"]
# rows that need the session's files ({name} is filled in) or the workdir's: afile (a file),
# lp (a symlink loop), existing (a completed run), elink (a link to it), "my runs/run" (a copy)
CASES += [
    # ---- damaged IDX files: named as unreadable, counts and labels checked per split
    ([*IDX, "dataset.root={idx_truncated}"], ["dataset=mnist", "could not be read", "truncated"]),
    ([*IDX, "dataset.root={idx_magic}"], ["dataset=mnist", "could not be read", "magic"]),
    ([*IDX, "dataset.root={idx_swapped}"], ["dataset=mnist", "could not be read", "swapped"]),
    ([*IDX, "dataset.root={idx_swapped_test}"], ["dataset=mnist", "could not be read"]),
    ([*IDX, "dataset.root={idx_fewer_labels}"], ["(train split", "60 images but 50 labels"]),
    ([*IDX, "dataset.root={idx_more_labels}"], ["(train split", "60 images but 70 labels"]),
    ([*IDX, "dataset.root={idx_test_counts}"], ["(test split", "30 images but 20 labels"]),
    ([*IDX, "dataset.root={idx_label_200}"], ["labels range 0..200", "10 classes"]),
    ([*IDX, "dataset.root={idx_test_label_10}"], ["(test split", "labels range 0..10"]),
    ([*IDX, "dataset.root={idx_empty_labels}"], ["dataset=mnist", "could not be read"]),
    ([*IDX, "dataset.root={idx_header_only}"], ["dataset=mnist", "could not be read"]),
    ([*IDX, "dataset.root={idx_wrong_shape}"], ["images of shape (1, 32, 32)", "(1, 28, 28)"]),
    ([*IDX, "dataset.root={idx_no_labels}"], ["dataset=mnist: the files were not found"]),
    # ---- transfer sources: regular files under a size limit; a spec in a file is data
    ([*FT, "strategy.source=/dev/zero"], ["strategy.source=/dev/zero is a character device"]),
    ([*FT, "strategy.source={src_fifo}"], ["fifo.pt is a named pipe (FIFO)"]),
    ([*FT, "strategy.source={src_sparse}"], ["sparse.pt is 40 GB", "more than the"]),
    ([*FT, "strategy.source={src_loop_run}"], ["best.pt cannot be read", "symbolic links"]),
    ([*FT, "strategy.source={src_norun}"], ["not a stagetrain run directory"]),
    ([*FT, "strategy.source={src_empty_pt}"], ["empty.pt"]),
    ([*FT, "strategy.source={src_garbage_pt}"], ["garbage.pt"]),
    ([*FT, "strategy.source={src_text_pt}"], ["text.pt"]),
    ([*FT, "strategy.source={src_garbage_safetensors}"], ["not a readable safetensors file"]),
    ([*FT, "strategy.source={src_arch_list}"], ["arch_list.pt is not valid", "not a mapping"]),
    ([*FT, "strategy.source={src_arch_no_head}"], ["arch_no_head.pt is not valid", "'head' is missing"]),
    ([*FT, "strategy.source={src_arch_bad_act}"], ["arch_bad_act.pt is not valid", "'swish9'"]),
    ([*FT, "strategy.source={src_arch_huge}"], ["arch_huge.pt is not valid", "1000000000 is out of range"]),
    ([*FT, "strategy.source={src_arch_many_blocks}"], ["arch_many_blocks.pt is not valid", "5,000 blocks"]),
    ([*FT, "strategy.source={src_arch_bad_type}"], ["arch_bad_type.pt cannot be built", "rootkit"]),
    ([*FT, "strategy.source={src_arch_bad_shape}"], ["arch_bad_shape.pt is not valid", "in_shape"]),
    ([*FT, "strategy.source={src_arch_string_width}"], ["arch_string_width.pt cannot be built"]),
    ([*FT, "strategy.source={src_arch_params}"], ["arch_params.pt has", "parameters, more than"]),
    ([*FT, "strategy.source={src_st_bad_json}"], ["st_bad_json.safetensors", "not valid JSON"]),
    ([*FT, "strategy.source={src_st_huge}"], ["st_huge.safetensors is not valid", "out of range"]),
    ([*FT, "strategy.source={src_nan_weights}"], ["nan_weights.pt: its weight", "NaN or inf"]),
    ([*FT, "strategy.source={src_nan_bare}"], ["nan_bare.pth: its weight", "NaN or inf"]),
    ([*FT, "strategy.source={src_inf_safetensors}"], ["inf.safetensors: its weight", "NaN or inf"]),
    # ---- YAML from --config-dir: size and alias expansion bounded
    ([*CD, "experiment=bomb", *TRAIN], ["bomb.yaml uses YAML aliases", "100,000"]),
    ([*CD, "experiment=huge", *TRAIN], ["huge.yaml is 2,000,028 bytes"]),
    ([*CD, "experiment=cycle", *TRAIN], ["cycle.yaml uses YAML aliases"]),
    # ---- run directories: one identity, refused before anything is written
    ([*TRAIN, "hydra.run.dir=afile"], ["run directory", "afile: File exists", "in the way"]),
    ([*TRAIN, "hydra.run.dir=afile/sub"], ["afile/sub: Not a directory"]),
    ([*TRAIN, "hydra.run.dir=/proc/stagetrain-x"], ["/proc/stagetrain-x"]),
    ([*TRAIN, "hydra.run.dir=/proc/self/status"], ["/status: File exists"]),
    ([*TRAIN, "hydra.run.dir=/sys/kernel/stagetrain-x"], ["Could not create the run directory /sys/kernel/stagetrain-x"]),
    ([*TRAIN, "hydra.run.dir=lp"], ["lp", "points back at itself"]),
    ([*TRAIN, "hydra.run.dir=lp/run"], ["lp/run", "points back at itself"]),
    (["-m", *TRAIN, "seed=0,1", "hydra.sweep.dir=afile"], ["sweep directory", "afile: File exists"]),
    ([*TRAIN, "hydra.run.dir=existing"], ["existing already holds a run", "resume=auto"]),
    ([*TRAIN, "hydra.run.dir=existing/"], ["existing already holds a run"]),
    ([*TRAIN, "hydra.run.dir=./existing/../existing"], ["existing already holds a run"]),
    ([*TRAIN, "hydra.run.dir=elink"], ["/existing already holds a run"]),
    ([*TRAIN, "hydra.run.dir=my\\ runs/run"], ["my runs/run already holds a run"]),
    ([*TRAIN, "hydra.run.dir='my runs/run'"], ["my runs/run already holds a run"]),
    ([*TRAIN, "resume=lp"], ["resume=lp", "no run.json"]),
    ([*TRAIN, "resume=afile"], ["resume=afile", "no run.json"]),
]
# with run.json damaged in place: refused before Hydra touches the run's files
DAMAGED = [("truncated", b'{"status": "runn'), ("a list", b"[]"), ("null", b"null"), ("binary", b"\xff\xfe\x00")]
CASES += [([*TRAIN, "hydra.run.dir=existing", "resume=auto", f"+_damage={name}"], ["Could not read", "run.json"])
          for name, _ in DAMAGED]
# with another process holding the run's (or sweep's) lock: every spelling of the path is refused
LOCKED = [
    [*TRAIN, "resume=existing"], [*TRAIN, "resume=existing/"], [*TRAIN, "resume=elink"],
    [*TRAIN, "hydra.run.dir=existing", "resume=auto"], [*TRAIN, "hydra.run.dir=elink", "resume=auto"],
    [*TRAIN, "hydra.run.dir=./elink/.", "resume=auto"], [*TRAIN, "hydra.run.dir=my\\ runs/run", "resume=auto"],
    [*TRAIN, "resume='my runs/run'"], [*TRAIN, "hydra.run.dir=sweep/0", "resume=auto"],
    ["-m", *TRAIN, "seed=0,1", "hydra.sweep.dir=sweep"], ["-m", *TRAIN, "seed=0,1", "hydra.sweep.dir=./sweep/"],
    ["-m", *TRAIN, "seed=0,1", "hydra.sweep.dir=slink", "resume=auto"],
]
CASES += [([*args, "+_locked=1"], ["Another stagetrain process is using the"]) for args in LOCKED]
LOCKER = ("import fcntl, os, sys, time\nfds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]\n"
          "[fcntl.flock(fd, fcntl.LOCK_EX) for fd in fds]\nprint('locked', flush=True)\ntime.sleep(120)\n")


def _id(args: list[str]) -> str:
    return " ".join(a for a in args if a not in TRAIN and a not in FT)


@pytest.fixture(scope="session")
def files(tmp_path_factory, good_run) -> dict[str, Path]:  # noqa: F811
    return _files(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def workdir(tmp_path, good_run, monkeypatch) -> Path:  # noqa: F811
    """A cwd holding a completed run (also linked and copied under a name with a space),
    a sweep directory with one job, a plain file and a symlink loop."""
    shutil.copytree(good_run, tmp_path / "existing", symlinks=True)
    shutil.copytree(good_run, tmp_path / "my runs" / "run", symlinks=True)
    shutil.copytree(good_run, tmp_path / "sweep" / "0", symlinks=True)
    (tmp_path / "elink").symlink_to("existing")
    (tmp_path / "slink").symlink_to("sweep")
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "lp").symlink_to("lp")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    return tmp_path


def test_the_table_has_at_least_150_distinct_rows_with_the_report_table():
    from test_hostile_report import CASES as REPORT

    assert len({_id(a) for a, _ in CASES}) == len(CASES), "duplicate rows"
    assert len(CASES) + len(REPORT) >= 150, len(CASES) + len(REPORT)


@pytest.mark.parametrize("args,expected", CASES, ids=[_id(a) for a, _ in CASES])
def test_hostile_input_is_refused_cleanly(args, expected, files, workdir, capsys):
    marks = [a for a in args if a.startswith("+_")]
    args = [a.format(**files) for a in args if a not in marks]
    expected = [e.format(**files) for e in expected]
    for mark in marks:
        if mark.startswith("+_damage="):
            (workdir / "existing" / "run.json").write_bytes(dict(DAMAGED)[mark.split("=", 1)[1]])
    locker = None
    if "+_locked=1" in marks:
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, "existing", "my runs/run", "sweep", "sweep/0"],
                                  stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
    before = fingerprint(workdir)
    try:
        code = run_main([*args, "progress=off", "plots=false", "device=cpu", "device.threads=1"])
    finally:
        if locker is not None:
            locker.kill()
            locker.wait()
    out = capsys.readouterr()
    text = out.out + out.err
    assert_refused(code, text, expected)
    assert fingerprint(workdir) == before, "a refused input changed or left files in the working directory"

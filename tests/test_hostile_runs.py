"""Hostile situations that need a real run: two processes on one run directory (through a
path with a space, through a symlink), two identical sweeps at once, a write failure at the
very end, SIGTERM during start-up, non-finite weights and gradients named for what they are,
a constant test split."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, make_cfg, make_idx_images, write_idx
from faults.test_nonfinite import count_steps
from hostile import TINY, good_run, run_main  # noqa: F401 - good_run: a fixture
from torch.optim.optimizer import register_optimizer_step_post_hook

from stagetrain.core.errors import StagetrainError
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

EXE = str(Path(sys.executable).parent / "stagetrain")
ENV = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT), "OMP_NUM_THREADS": "1"}
SLOW = ["strategy=scratch", "model.widths=[64]", "train.epochs=6", "progress=off", "plots=false",
        "device=cpu", "device.threads=1", "checkpoint.stage_checkpoints=false"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _rows(run: Path) -> Counter:
    """How often each (stage, epoch, split) row is in metrics.jsonl: a second writer doubles some."""
    return Counter((e.get("stage"), e.get("epoch"), e.get("split")) for e in read_metrics(run / "metrics.jsonl")
                   if "split" in e)


def test_two_processes_on_one_run_through_a_space_and_a_symlink_never_both_write(tmp_path):
    run = tmp_path / "my runs" / "run"
    assert run_main([*SLOW, "train.epochs=1", f"hydra.run.dir={run}"]) == 0
    info = json.loads((run / "run.json").read_text())
    info["status"] = "stopped"  # an interrupted run that both launches would continue
    (run / "run.json").write_text(json.dumps(info))
    (tmp_path / "link").symlink_to(run)
    procs = [_start([*SLOW, "hydra.run.dir=my\\ runs/run", "resume=auto"], tmp_path),
             _start([*SLOW, f"resume={tmp_path / 'link'}"], tmp_path)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert sorted(p.returncode for p in procs) in ([0, 0], [0, 1]), outs
    assert all("Traceback" not in o for o in outs), outs
    if 1 in [p.returncode for p in procs]:
        assert "Another stagetrain process is using the run directory" in outs[[p.returncode for p in procs].index(1)]
    assert max(_rows(run).values()) == 1, "two processes wrote the same epochs"
    assert not (tmp_path / "my\\ runs").exists(), "a stray escaped directory"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_two_identical_sweeps_with_resume_auto_run_each_job_once(tmp_path):
    args = ["-m", *SLOW, "train.epochs=2", "seed=0,1", "hydra.sweep.dir=sweep", "resume=auto"]
    procs = [_start(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    refused = outs[[p.returncode for p in procs].index(1)]
    assert "Another stagetrain process is using the sweep directory" in refused and "Traceback" not in refused
    for job in ("0", "1"):
        assert max(_rows(tmp_path / "sweep" / job).values()) == 1
        assert json.loads((tmp_path / "sweep" / job / "run.json").read_text())["status"] == "completed"


def test_sigterm_during_start_up_leaves_nothing_behind(tmp_path):
    """Also SIGTERM during the imports (earlier than this test waits for) leaves nothing."""
    proc = _start([*SLOW, "train.epochs=50"], tmp_path)
    for _ in range(3000):  # up to a minute on a busy machine: until the run directory is reserved
        if (tmp_path / "outputs").exists() or proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in out, out
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.rglob('*'))}"


def test_a_failed_model_export_at_the_end_leaves_the_run_resumable(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "model.safetensors").mkdir(parents=True)  # in the way of the final rename, like a full disk
    assert run_main([*TINY, f"hydra.run.dir={run}"]) == 1
    err = capsys.readouterr().err
    assert "Could not write the final model" in err and "resume=auto" in err and "Traceback" not in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "final model" in info["error"]
    (run / "model.safetensors").rmdir()
    assert run_main([*TINY, f"hydra.run.dir={run}", "resume=auto"]) == 0
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert (run / "model.safetensors").is_file() and max(_rows(run).values()) == 1


def test_a_nan_gradient_is_named_before_the_learning_rate(tmp_path):
    with count_steps(poison_at={3}), pytest.raises(StagetrainError) as err:
        train(make_cfg(*TINY, "device.threads=1"), tmp_path)
    assert "First non-finite thing found: a gradient" in str(err.value)


def test_a_nan_in_the_input_batch_is_named_as_the_data(tmp_path, monkeypatch):
    import stagetrain.runs.parts

    real = stagetrain.runs.parts.load_data

    def with_nan(ds, seed, *args):  # data read with a NaN in every sample (statistics were finite)
        bundle = real(ds, seed, *args)
        bundle.train.x[:, 0] = float("nan")
        return bundle

    monkeypatch.setattr(stagetrain.runs.parts, "load_data", with_nan)
    with pytest.raises(StagetrainError) as err:
        train(make_cfg("dataset=synthetic", "strategy=scratch", "train.epochs=1", "plots=false"), tmp_path)
    msg = str(err.value)
    assert "First non-finite thing found: the stage's input batch" in msg and "lower learning rate will not" in msg


def test_nan_weights_are_named_and_the_learning_rate_is_not_blamed(tmp_path):
    def poison(opt, args, kwargs):
        with torch.no_grad():
            opt.param_groups[0]["params"][0].fill_(float("nan"))

    handle = register_optimizer_step_post_hook(poison)
    try:
        with pytest.raises(StagetrainError) as err:
            train(make_cfg(*TINY), tmp_path)
    finally:
        handle.remove()
    msg = str(err.value)
    assert "First non-finite thing found: the weights (parameter 0" in msg
    assert "A lower learning rate will not help" in msg


def test_an_all_zero_test_split_is_warned_about(tmp_path, capsys):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 100), ("t10k", 40)):
        x, y = make_idx_images(n, 0, 0)
        write_idx(raw / f"{split}-images-idx3-ubyte", x * 0 if split == "t10k" else x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    assert run_main([*TINY, "dataset=mnist", f"dataset.root={tmp_path / 'data'}",
                     f"hydra.run.dir={tmp_path / 'run'}", "progress=plain"]) == 0
    log = (tmp_path / "run" / "stagetrain.log").read_text()
    assert "test split" in log and "every image is the same constant value (0)" in log


def test_a_sweep_job_whose_directory_another_process_holds_is_skipped_untouched(tmp_path, good_run, capsys):  # noqa: F811
    from hostile import fingerprint
    from test_hostile import LOCKER

    shutil.copytree(good_run, tmp_path / "sweep" / "0")
    info = json.loads((tmp_path / "sweep" / "0" / "run.json").read_text())
    (tmp_path / "sweep" / "0" / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    before = fingerprint(tmp_path / "sweep" / "0")
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path / "sweep" / "0")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        code = run_main(["-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", "resume=auto"])
    finally:
        locker.kill()
        locker.wait()
    out = capsys.readouterr()
    assert code == 1 and "Another stagetrain process is using the run directory" in out.err, out.out + out.err
    assert "1 of 2 jobs did not complete" in out.out  # listed, with how to retry it
    assert "Traceback" not in out.out + out.err
    assert fingerprint(tmp_path / "sweep" / "0") == before, "the held job's directory was written"
    assert json.loads((tmp_path / "sweep" / "1" / "run.json").read_text())["status"] == "completed"

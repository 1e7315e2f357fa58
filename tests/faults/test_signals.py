"""SIGTERM / SIGUSR1 on an MNIST-sized model (784-500-500-2000-10 MLP, 1.67M parameters,
real MNIST): the run checkpoints at the next step boundary and exits (code 3) within 10 s,
run.json says stopped, nothing is lost, and resume=auto continues from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from stagetrain import checkpoint as ckpt

from .harness import context
from .victim import child_main, read_record

ARGS = ["dataset=mnist", "model.widths=[500,500,2000]", "strategy=scratch", "train.epochs=2",
        "device=cpu", "progress=off"]  # plots on (the default): drawn on the way out too


def _signal_after_steps(run: Path, sig: signal.Signals, steps: int, tag: str, data_root: Path,
                        args: list[str] = ARGS, repeat: int = 1) -> tuple[int, float, dict]:
    """Start the CLI on ``run``, send ``sig`` once it has done ``steps`` more optimizer
    steps; return its exit code, seconds from the signal to its exit, and its record."""
    logs = run.parent / "logs"
    logs.mkdir(exist_ok=True)
    rec = logs / f"{tag}.rec"
    proc = context().Process(target=child_main, args=(
        [*args, f"hydra.run.dir={run}", "resume=auto"], None, str(rec), str(logs / f"{tag}.log"),
        {"STAGETRAIN_DATA": str(data_root)}))
    proc.start()
    deadline = time.time() + 300
    first = None
    while time.time() < deadline and proc.exitcode is None:
        r = read_record(rec)
        if r["started"] and r["completed"] >= 0:
            first = r["completed"] if first is None else first
            if r["completed"] - first >= steps:
                break
        time.sleep(0.05)
    assert proc.exitcode is None, f"the run ended before it could be signalled; see {logs}"
    sent = time.time()
    for _ in range(repeat):
        os.kill(proc.pid, sig)
    proc.join(60)
    waited = time.time() - sent
    if proc.exitcode is None:
        proc.kill()
    return proc.exitcode, waited, read_record(rec)


@pytest.mark.slow
@pytest.mark.full
def test_sigterm_then_sigusr1_checkpoint_and_exit_within_10s_on_mnist(tmp_path, data_root):
    run = tmp_path / "run"
    for sig, tag in ((signal.SIGTERM, "term"), (signal.SIGUSR1, "usr1")):
        code, seconds, rec = _signal_after_steps(run, sig, 20, tag, data_root)
        log = (tmp_path / "logs" / f"{tag}.log").read_text()
        assert code == 3, f"{sig.name}: exit code {code}\n{log}"
        assert seconds < 10, f"{sig.name}: {seconds:.1f} s from the signal to the exit"
        assert "Traceback" not in log and "resume=auto" in log
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "stopped" and sig.name in info["error"]
        state = ckpt.load(run / "checkpoints" / "last.pt")
        # the checkpoint is the step boundary after the signal: no step done is lost
        assert state["position"]["global_step"] == rec["completed"] and state["position"]["batch"] > 0
        print(f"{sig.name}: exited {seconds:.2f} s after the signal, at step {rec['completed']}")
    second = read_record(tmp_path / "logs" / "usr1.rec")
    first = read_record(tmp_path / "logs" / "term.rec")
    assert second["resumed"] == first["completed"], "resume=auto continued from the signal's checkpoint"


DIGITS = ["strategy=scratch", "train.epochs=200", "model.widths=[256,256]", "device=cpu", "progress=off",
          "plots=false"]


def test_ctrl_c_stops_like_sigterm_with_a_checkpoint_a_resume_hint_and_exit_130(tmp_path):
    run = tmp_path / "run"
    code, seconds, rec = _signal_after_steps(run, signal.SIGINT, 10, "int", tmp_path, DIGITS)
    log = (tmp_path / "logs" / "int.log").read_text()
    assert code == 130, f"exit code {code}\n{log}"
    assert "Traceback" not in log and "resume=auto" in log and str(run) in log
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped" and "SIGINT" in info["error"]
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["position"]["global_step"] == rec["completed"]


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_run_resumable(tmp_path):
    """Two Ctrl-C inside one step: the first asks for the graceful stop, the second raises
    KeyboardInterrupt at once; run.json says stopped (resumable), the checkpoint of the last
    finished epoch is intact."""
    from conftest import make_cfg
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from stagetrain.runs.runner import train

    steps = {"n": 0}

    def ctrl_c_twice(opt, args, kwargs):
        steps["n"] += 1
        if steps["n"] == 60:  # digits: 23 steps an epoch, so two epochs are checkpointed
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the first is handled (a flag) before the second arrives
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    handle = register_optimizer_step_post_hook(ctrl_c_twice)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(*DIGITS), tmp_path / "run")
    finally:
        handle.remove()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "stopped" and "second Ctrl-C" in info["error"] and "resume=auto" in info["error"]
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["position"]["epoch"] == 2 and state["position"]["batch"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"

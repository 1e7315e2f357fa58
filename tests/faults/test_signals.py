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


def _signal_after_steps(run: Path, sig: signal.Signals, steps: int, tag: str, data_root: Path) -> tuple[int, float, dict]:
    """Start the CLI on ``run``, send ``sig`` once it has done ``steps`` more optimizer
    steps; return its exit code, seconds from the signal to its exit, and its record."""
    logs = run.parent / "logs"
    logs.mkdir(exist_ok=True)
    rec = logs / f"{tag}.rec"
    proc = context().Process(target=child_main, args=(
        [*ARGS, f"hydra.run.dir={run}", "resume=auto"], None, str(rec), str(logs / f"{tag}.log"),
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

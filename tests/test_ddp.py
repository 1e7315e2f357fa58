"""torchrun DDP on the CPU (gloo, 2 processes): real runs of the console script.

Each test starts ``torchrun --nproc-per-node 2 $(which stagetrain) ...`` (about 20 s of
start-up each on 2 cores), so the file keeps to six torchrun launches; the single-process
references run in this process through ``train``.

Tolerance against one process with the same global batch: the math is the same (rank r
trains on its slice of the global batch, DDP averages the gradients), only the order of
the float32 additions differs -- each rank sums the gradient over half the batch and the
all-reduce adds the two halves, where one process sums over the whole batch in one go.
That moves results by an ulp or so per step, which a few hundred Adam steps grow to about
1e-5 relative; losses are compared at 1e-3 relative, accuracies within 0.01 (a sample
whose two top logits are nearly tied may flip), weights at 1e-3 absolute. A resumed DDP run against an uninterrupted DDP
run is bit-identical: same ranks, same slices, same addition order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, assert_epochs_exactly_once, make_cfg, run_dirs

from stagetrain.core.errors import StagetrainError
from stagetrain.distributed import check_world
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

pytestmark = pytest.mark.full  # torchrun multi-process runs: `pytest --full`

COMMON = ["device=cpu", "progress=off", "plots=false"]
# slow enough (9 epochs of 125 steps) to be signalled mid-run, small enough for 2 cores
LAYERWISE = ["strategy=layerwise", "dataset=synthetic", "dataset.n_train=4000", "dataset.shape=[1,28,28]",
             "model.widths=[128,64]", "train.batch_size=32", "strategy.epochs_per_layer=3",
             "strategy.finetune.epochs=3", "checkpoint.every_steps=40"]
GROW = ["strategy=grow", "strategy.widths=[[16],[32],[32,32]]", "strategy.epochs_per_stage=2",
        "strategy.final_epochs=2", "strategy.noise=0.01"]
# a Transformer (LayerNorm: no per-rank statistics) grown by Net2Net MLP widening and a zero-output layer
TRANSFORMER_GROW = [*GROW, "model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=1"]


def torchrun(*args: str, cwd: Path) -> list[str]:
    exe = Path(sys.executable).parent
    return [str(exe / "torchrun"), "--nproc-per-node", "2", str(exe / "stagetrain"), *args, *COMMON]


def run_torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)}
    proc = subprocess.run(torchrun(*args, cwd=cwd), cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_close_to_single(run: Path, single: dict, single_weights: dict[str, torch.Tensor]) -> None:
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["distributed"]["world_size"] == 2
    for key, value in single["final"].items():
        if key.endswith("/acc"):
            assert abs(info["final"][key] - value) <= 0.01, (key, info["final"][key], value)
        else:
            assert info["final"][key] == pytest.approx(value, rel=1e-3), key
    # global FLOPs across ranks: the same per-sample cost times the same samples as one process
    assert info["flops"] == pytest.approx(single["flops"], rel=1e-12)
    assert [s["samples"] for s in info["stages"]] == [s["samples"] for s in single["stages"]]
    got = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert got.keys() == single_weights.keys()
    for k in got:
        a, b = got[k], single_weights[k]
        if k.endswith("attn.qkv.bias"):  # the key bias: softmax ignores it, its gradient is float noise
            d = a.numel() // 3  # that Adam scales to full-size steps, differently in each addition order
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert torch.allclose(a, b, atol=1e-3, rtol=0), k


def single_process(tmp_path: Path, *args: str) -> tuple[dict, dict[str, torch.Tensor]]:
    run = tmp_path / "single"
    threads = torch.get_num_threads()
    try:  # 1 thread, like each torchrun rank: no oversubscribed cores while the machine is busy
        info = train(make_cfg(*args, *COMMON, "device.threads=1"), run)
    finally:
        torch.set_num_threads(threads)
    return info, torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_layerwise(tmp_path_factory) -> Path:
    """An uninterrupted DDP layerwise run in its own cwd, named by the default resolver."""
    cwd = tmp_path_factory.mktemp("ddp_layerwise")
    run_torchrun(*LAYERWISE, cwd=cwd)
    return cwd


def test_ddp_layerwise_one_run_dir_matches_single_process(ddp_layerwise, tmp_path):
    (run,) = run_dirs(ddp_layerwise)  # both ranks used rank 0's directory name
    assert [p.name for p in (ddp_layerwise / "outputs").iterdir()] == [run.parent.name]
    assert len(list(run.parent.iterdir())) == 1, "a rank left a stray run directory"
    for name in (".hydra/config.yaml", "stagetrain.log", "model.safetensors", "checkpoints/best.pt",
                 "checkpoints/stage-3-finetune.pt"):
        assert (run / name).exists(), name
    assert_epochs_exactly_once(run)  # metrics.jsonl written by rank 0 only
    info = json.loads((run / "run.json").read_text())
    assert info["distributed"] == {"world_size": 2, "backend": "gloo", "batch_per_rank": 16}
    assert [s["name"] for s in info["stages"]] == ["greedy-block1", "greedy-block2", "finetune"]
    assert_close_to_single(run, *single_process(tmp_path, *LAYERWISE))


@pytest.mark.parametrize("args", [GROW, TRANSFORMER_GROW], ids=["mlp", "transformer"])
def test_ddp_grow_changes_the_model_between_stages_and_matches_single_process(args, tmp_path):
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    run_torchrun(*args, cwd=cwd)
    (run,) = run_dirs(cwd)
    info = json.loads((run / "run.json").read_text())
    assert [s["params"] for s in info["stages"]] == sorted({s["params"] for s in info["stages"]})
    growth = [e for e in read_metrics(run / "metrics.jsonl") if e.get("event") == "growth"]
    assert len(growth) == 2
    for e in growth:  # Net2Net with small noise: the function is (nearly) preserved under DDP too
        assert e["probe_loss_after"] == pytest.approx(e["probe_loss_before"], rel=0.05)
    assert_close_to_single(run, *single_process(tmp_path, *args))


# LP-FT: a full-batch L-BFGS probe stage (strategy.probe=lbfgs, the default) between a
# pretraining stage and the fine-tune
LP_FT = ["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.classes=[0,1,2,3,4]",
         "dataset.classes=[5,6,7,8,9]", "strategy.mode=lp_ft", "strategy.pretrain.epochs=2", "train.epochs=2"]


def test_ddp_lbfgs_probe_agrees_across_ranks_and_matches_single_process(tmp_path):
    """Each rank's L-BFGS sees the global loss, so both take the same line-search steps (a rank
    evaluating once more than the other used to hang the run in a collective mismatch)."""
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    run_torchrun(*LP_FT, cwd=cwd)
    (run,) = run_dirs(cwd)
    info = json.loads((run / "run.json").read_text())
    probe = next(s for s in info["stages"] if s["name"] == "lp")
    single, _ = single_process(tmp_path, *LP_FT)
    assert info["status"] == "completed" and info["distributed"]["world_size"] == 2
    # the same solve up to the float addition order, which a converged quasi-Newton solve keeps
    # within its tolerance rather than within an ulp: passes within a fifth, metrics close
    passes = next(s for s in single["stages"] if s["name"] == "lp")["solver_passes"]
    assert abs(probe["solver_passes"] - passes) <= 0.2 * passes, (probe["solver_passes"], passes)
    for key, value in single["final"].items():
        assert info["final"][key] == pytest.approx(value, abs=0.02 if key.endswith("/acc") else 0, rel=1e-2), key


def test_ddp_sigterm_checkpoints_and_resume_auto_under_torchrun_is_exact(ddp_layerwise, tmp_path):
    run = tmp_path / "stopped"
    env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)}
    proc = subprocess.Popen(torchrun(*LAYERWISE, f"hydra.run.dir={run}", cwd=tmp_path), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not any(e.get("split") == "val" for e in _events(run)):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped", out[-3000:]
    assert info["stages"] == [] or len(info["stages"]) < 3
    run_torchrun(*LAYERWISE, f"hydra.run.dir={run}", "resume=auto", cwd=tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert_epochs_exactly_once(run)
    (reference,) = run_dirs(ddp_layerwise)
    ref = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    got = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_batch_size_not_divisible_by_world_size_is_refused():
    with pytest.raises(StagetrainError, match=r"train.batch_size=63 .* 2 torchrun processes.*train.batch_size=62"):
        check_world(63, 2)
    check_world(64, 2)


def _events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []

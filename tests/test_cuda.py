"""The GPU fast path: GPU-resident data, bf16 autocast, torch.compile (CUDA graphs), and
``device.deterministic`` giving bit-identical runs.

These are the only tests that skip, and only when PyTorch sees no CUDA GPU (marker
``cuda`` in pyproject.toml). Run them on a GPU machine with ``pytest -m cuda``.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_cfg, run_cli

from stagetrain.engine import Engine
from stagetrain.progress import Reporter
from stagetrain.runs.device import pick_device
from stagetrain.runs.parts import build_engine
from stagetrain.runs.runner import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = ["device=cuda", "progress=off", "plots=false"]


def cuda_engine(*overrides: str) -> Engine:
    cfg = make_cfg(*CUDA, *overrides)
    return build_engine(cfg, pick_device(cfg.device), None, Reporter("off"))[0]


def test_dataset_lives_on_the_gpu_and_batches_never_leave_it(monkeypatch):
    engine = cuda_engine("strategy=scratch", "train.epochs=5")
    data = engine.data
    for t in (data.train.x, data.train.y, data.val.x, data.test.x, data.labeled, data.mean, data.std):
        assert t.device.type == "cuda"
    copies = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):  # a host tensor moved to the GPU inside the loop is a copy per step
        out = original(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda" and self.numel() > 1:
            copies.append(tuple(self.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    final = engine.run()
    steps = engine.state.global_step  # allowed: the epoch's permutation (one per epoch), a little slack
    assert len(copies) <= 5 + 2, f"{len(copies)} host-to-GPU copies for {steps} steps: {copies[:5]}"
    assert final["test/acc"] >= 0.8


def test_bf16_autocast_on_gpu():
    engine = cuda_engine("strategy=scratch", "train.epochs=5", "device.precision=bf16")
    dtypes = set()
    engine.model.blocks["block1"].layer.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    final = engine.run()
    assert torch.bfloat16 in dtypes  # (the FLOP probe runs a copy outside autocast, in fp32)
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
    assert final["test/acc"] >= 0.8


@pytest.mark.parametrize("strategy", ["scratch", "grow"])
def test_compile_on_gpu_compiles_each_stage_and_trains(strategy, built_steps):
    built = built_steps
    extra = ["strategy.widths=[[32],[64]]", "strategy.epochs_per_stage=3"] if strategy == "grow" else []
    engine = cuda_engine(f"strategy={strategy}", "train.epochs=5", "device.compile=true", *extra)
    final = engine.run()
    assert len(built) == len(engine.plan.stages)  # recompiled per stage: growth changes the model
    assert all(isinstance(s, torch._dynamo.eval_frame.OptimizedModule) for s in built)
    assert final["test/acc"] >= 0.8


def test_compile_with_bf16_on_gpu_trains_a_cnn(tmp_path):
    info = train(make_cfg(*CUDA, "strategy=scratch", "model=cnn", "train.epochs=4",
                          "device.compile=true", "device.precision=bf16"), tmp_path / "run")
    assert info["status"] == "completed" and info["final"]["test/acc"] >= 0.8


def test_deterministic_gpu_runs_are_bit_identical(tmp_path):
    """Two fresh processes (cuBLAS's workspace setting must precede CUDA's start), a CNN (cuDNN)
    and an MLP grown between stages. (CNN auxiliary heads pool adaptively, which has no
    deterministic CUDA backward: such runs stop with a message, see the last test.)"""
    for args in (["strategy=scratch", "model=cnn", "train.epochs=3"],
                 ["strategy=grow", "strategy.widths=[[32],[64]]", "strategy.epochs_per_stage=2"]):
        _assert_two_runs_identical(tmp_path / args[0].split("=")[1], [*args, "device.deterministic=true", *CUDA])


def _assert_two_runs_identical(tmp_path, args):
    tmp_path.mkdir()
    weights = []
    for name in ("a", "b"):
        run = tmp_path / name
        proc = run_cli(*args, f"hydra.run.dir={run}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads((run / "run.json").read_text())["device"].startswith("cuda")
        weights.append(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"])
    a, b = weights
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_with_an_op_cuda_cannot_run_deterministically_fails_with_a_message(tmp_path):
    proc = run_cli("strategy=layerwise", "model=cnn", "strategy.epochs_per_layer=1", "strategy.finetune.epochs=1",
                   "device.deterministic=true", *CUDA, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "device.deterministic=false" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

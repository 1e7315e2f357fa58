"""The fast-path settings on the CPU, where they are cheap: bf16 autocast, torch.compile of
the stage's training forward, and what ``device.deterministic`` switches on.

The GPU side of the same settings (GPU-resident data, bf16, compile with CUDA graphs,
bit-identical deterministic runs) is in tests/test_cuda.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_cfg

from stagetrain.engine import Engine
from stagetrain.progress import Reporter
from stagetrain.runs.device import pick_device
from stagetrain.runs.parts import build_engine

SMALL = ["strategy=scratch", "device=cpu", "model.widths=[32]", "train.epochs=3", "optim.lr=0.01"]


def run_engine(cfg) -> tuple[Engine, dict[str, float]]:
    engine = build_engine(cfg, torch.device("cpu"), None, Reporter("off"))[0]
    return engine, engine.run()


def test_bf16_autocast_runs_the_training_forward_in_bf16_on_cpu():
    cfg = make_cfg(*SMALL, "device.precision=bf16")
    engine = build_engine(cfg, torch.device("cpu"), None, Reporter("off"))[0]
    dtypes = set()
    engine.model.blocks["block1"].layer.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    final = engine.run()
    assert torch.bfloat16 in dtypes  # training and evaluation forwards ran under autocast
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # fp32 master weights
    _, fp32 = run_engine(make_cfg(*SMALL))
    assert final["val/acc"] >= 0.85 and abs(final["val/acc"] - fp32["val/acc"]) <= 0.05


def test_compile_compiles_the_stage_forward_and_matches_eager_on_cpu(built_steps):
    built = built_steps
    _, eager = run_engine(make_cfg(*SMALL))
    _, compiled = run_engine(make_cfg(*SMALL, "device.compile=true"))
    assert not isinstance(built[0], torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(built[1], torch._dynamo.eval_frame.OptimizedModule)
    # inductor fuses and reorders float32 arithmetic: close to eager, not bit-identical
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-3)
    assert abs(compiled["val/acc"] - eager["val/acc"]) <= 0.01


def test_deterministic_sets_cublas_workspace_and_deterministic_algorithms(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        assert pick_device(make_cfg("device=cpu", "device.deterministic=true").device).type == "cpu"
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)


# ---- default CPU threads follow the model's size (issue 28)

def test_threads_default_to_one_for_a_small_model_and_the_choice_says_why(monkeypatch):
    from stagetrain.core.schema import DeviceConfig
    from stagetrain.runs import device as dev

    monkeypatch.setattr(dev, "job_threads", lambda: None)
    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    try:
        small = dev.choose_threads(DeviceConfig(), cpu, 3.2e5)  # the digits MLP
        assert small["threads"] == 1 == torch.get_num_threads() and "small model" in small["reason"]
        big = dev.choose_threads(DeviceConfig(), cpu, 1e9)
        assert big["threads"] == dev._default_threads() == torch.get_num_threads() and "default" in big["reason"]
        assert dev.choose_threads(DeviceConfig(threads=3), cpu, 3.5e5) == {"threads": 3, "reason": "device.threads"}
        monkeypatch.setattr(dev, "job_threads", lambda: (2, "joblib launcher, n_jobs=4 on 8 CPUs"))
        assert dev.choose_threads(DeviceConfig(), cpu, 3.5e5)["reason"].startswith("joblib launcher")
    finally:
        torch.set_num_threads(before)

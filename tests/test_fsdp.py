"""``device.shard=fsdp``: FSDP2 under torchrun on the CPU (gloo, 2 processes), sharded DCP checkpoints.

The torchrun tests (``pytest --full``) keep to nine launches (about 20 s of start-up each on 2
cores) and put several checks in each; single-process references run in this process.
Tolerances are those of tests/test_ddp.py: FSDP's reduce-scatter adds the two ranks' gradient
halves like DDP's all-reduce (FSDP against DDP differed by 5e-10 in the weights of a scratch MLP
on this machine), so weights agree with one process to 1e-3 and losses to 1e-3 relative. A
sharded run resumed on the same ranks is bit-identical to the uninterrupted one; its checkpoint
read by one process (DCP reshards) gives whole tensors: the frozen block equal to the stage-1
checkpoint's, the trained block and the Adam moments assembled from both ranks' shards.

The default suite checks what needs no torchrun: the key's validation, the refusal without
torchrun, activation checkpointing, and the manifest logic of a sharded checkpoint written by a
one-rank process group (complete, a rank's file or the manifest missing, a digest wrong, a
hostile ``.metadata`` pickle).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, assert_epochs_exactly_once, make_cfg

from stagetrain.checkpoint import sharded
from stagetrain.checkpoint.resume import latest_state
from stagetrain.core.errors import StagetrainError
from stagetrain.engine.options import EngineOptions
from stagetrain.engine.saving import load_model
from stagetrain.engine.sharding import require_launched, set_activation_checkpointing
from stagetrain.models import StagedModel
from stagetrain.runs.config import validate
from stagetrain.runs.rundir import RunDir, read_metrics
from stagetrain.runs.runner import train

COMMON = ["device=cpu", "progress=off", "plots=false"]
LAYERWISE = ["strategy=layerwise", "dataset=synthetic", "dataset.n_train=2000", "dataset.shape=[1,28,28]",
             "model.widths=[64,32]", "train.batch_size=32", "strategy.epochs_per_layer=2",
             "strategy.finetune.epochs=2", "checkpoint.every_steps=20"]
SMALL = ["dataset=synthetic", "dataset.n_train=800", "train.batch_size=32"]
SCRATCH = ["strategy=scratch", "model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=2",
           *SMALL, "strategy.epochs=2"]
GROW = ["strategy=grow", "strategy.widths=[[16],[32],[32,32],[32,32,32]]", "strategy.epochs_per_stage=2",
        "strategy.final_epochs=2", "strategy.deepen=insert", *SMALL]


# ---------------------------------------------------------------- default suite: no torchrun
def test_a_bad_shard_value_is_refused_and_fsdp_needs_torchrun():
    with pytest.raises(StagetrainError, match=r"device.shard='zero3' is not valid: choose one of none, fsdp"):
        validate(make_cfg("device.shard=zero3"))
    assert validate(make_cfg("device.shard=fsdp")).device.shard == "fsdp"  # the key itself is valid
    with pytest.raises(StagetrainError, match=r"device.shard=fsdp shards the model .* single process.*torchrun"
                       r".*A resumed run keeps the device.shard of its saved config: resume .* under torchrun"):
        require_launched(EngineOptions(shard="fsdp"), 1)
    require_launched(EngineOptions(shard="fsdp"), 2)
    require_launched(EngineOptions(), 1)


def test_activation_checkpointing_recomputes_trainable_blocks_with_the_same_gradients():
    torch.manual_seed(0)
    model, x = StagedModel(SPEC), torch.randn(8, 6)
    model.blocks["block1"].requires_grad_(False)
    calls = []
    model.blocks["block2"].layer.register_forward_hook(lambda *_: calls.append(1))
    model(x).square().sum().backward()
    assert len(calls) == 1
    plain = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    set_activation_checkpointing(model, True)
    assert "forward" in vars(model.blocks["block2"]) and "forward" not in vars(model.blocks["block1"])
    calls.clear()
    model(x).square().sum().backward()
    assert len(calls) == 2  # the forward, and its recompute in the backward pass
    trained = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(trained) == len(plain) and all(torch.equal(a, b) for a, b in zip(plain, trained, strict=True))
    set_activation_checkpointing(model, False)
    assert "forward" not in vars(model.blocks["block2"])



SPEC = {"in_shape": [6], "blocks": [{"name": "block1", "type": "linear", "in": 6, "out": 5, "out_shape": [5]},
                                    {"name": "block2", "type": "linear", "in": 5, "out": 4, "out_shape": [4]}],
        "head": {"in": 4, "out": 3}}


def _write(folder: Path, step: int = 7) -> dict[str, torch.Tensor]:
    tensors = {"model": {"model.w": torch.arange(12.0).reshape(3, 4)}, "optim": {"model.w": {"step": torch.tensor(3.0)}}}
    meta = {"arch": SPEC, "model": {}, "position": {"stage": 0, "stage_name": "s", "epoch": 1, "batch": 2,
                                                    "global_step": step}, "config_yaml": "", "run_state": {}}
    sharded.save_sharded(tensors, meta, folder / "last.dcp", folder / "last-prev.dcp", 1)
    return tensors


def test_a_sharded_checkpoint_is_complete_only_with_every_file_and_its_manifest(one_rank, tmp_path):
    _write(tmp_path)
    _write(tmp_path)  # the second write keeps the first as last-prev.dcp
    last = tmp_path / "last.dcp"
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "manifest.json", "state.pt"]
    assert (tmp_path / "last-prev.dcp" / "manifest.json").exists() and not list(tmp_path.glob(".*.tmp"))
    manifest = sharded.verify(last)
    assert manifest["world_size"] == 1 and manifest["position"]["global_step"] == 7
    target = {"model": {"model.w": torch.zeros(3, 4)}}
    sharded.load_tensors(last, target)
    assert torch.equal(target["model"]["model.w"], torch.arange(12.0).reshape(3, 4))
    for damage, said in ((lambda d: (d / "__0_0.distcp").unlink(), "__0_0.distcp missing"),
                         (lambda d: (d / "manifest.json").unlink(), "it has no manifest.json"),
                         (lambda d: _flip(d / "__0_0.distcp"), "the SHA-256 of __0_0.distcp does not match"),
                         (lambda d: _flip(d / "state.pt"), "the SHA-256 of state.pt does not match")):
        broken = tmp_path / "broken.dcp"
        shutil.copytree(last, broken)
        damage(broken)
        with pytest.raises(StagetrainError, match="is incomplete or corrupt: " + said) as e:
            sharded.verify(broken)
        assert "was not loaded" in str(e.value)
        shutil.rmtree(broken)


def test_resume_falls_back_from_a_partial_sharded_checkpoint_to_the_previous_one(one_rank, tmp_path, caplog):
    rundir = RunDir(tmp_path)
    rundir.checkpoints.mkdir()
    _write(rundir.checkpoints, step=7)
    _write(rundir.checkpoints, step=9)  # last.dcp; the step-7 one is now last-prev.dcp
    assert latest_state(rundir)["position"]["global_step"] == 9
    (rundir.checkpoints / "last.dcp" / "__0_0.distcp").unlink()  # a rank's part lost
    state = latest_state(rundir)
    assert state["position"]["global_step"] == 7 and state["sharded"].endswith("last-prev.dcp")
    assert "__0_0.distcp missing" in caplog.text and "Falling back to the previous checkpoint" in caplog.text


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_hostile_metadata_pickle_is_refused_unexecuted_even_with_a_matching_manifest(one_rank, tmp_path):
    _write(tmp_path)
    last = tmp_path / "last.dcp"
    (last / ".metadata").write_bytes(pickle.dumps(_Boom()))
    manifest = json.loads((last / "manifest.json").read_text())  # the attacker rewrites the digests too
    manifest["files"][".metadata"] = sharded._sha256(last / ".metadata")
    (last / "manifest.json").write_text(json.dumps(manifest))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # digests only catch damage, not a hostile writer: verify reads the index too, and so does loading
        for read in (sharded.verify, lambda d: sharded.load_tensors(d, {"model": {"model.w": torch.zeros(3, 4)}})):
            with pytest.raises(StagetrainError, match=r"\.metadata was refused \(posix\.system is not part"):
                read(last)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- torchrun, 2 processes (pytest --full)
def _cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).parent
    return [str(exe / "torchrun"), "--nproc-per-node", "2", str(exe / "stagetrain"), *args, *COMMON,
            "device.shard=fsdp"]


def _torchrun(*args: str, cwd: Path) -> None:
    env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)}
    proc = subprocess.run(_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    out = "\n".join(ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith("W1"))
    assert proc.returncode == 0, out[-4000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _single(tmp_path: Path, name: str, *args: str) -> tuple[dict, dict[str, torch.Tensor]]:
    threads = torch.get_num_threads()
    try:
        info = train(make_cfg(*args, *COMMON, "device.threads=1"), tmp_path / name)
    finally:
        torch.set_num_threads(threads)
    return info, _weights(tmp_path / name)


def _assert_close(run: Path, single: dict, weights: dict[str, torch.Tensor]) -> dict:
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["distributed"]["world_size"] == 2
    for key, value in single["final"].items():
        if key.endswith("/acc"):
            assert abs(info["final"][key] - value) <= 0.01, key
        else:
            assert info["final"][key] == pytest.approx(value, rel=1e-3), key
    assert [(s["params"], s["trainable_params"], s["samples"]) for s in info["stages"]] == \
        [(s["params"], s["trainable_params"], s["samples"]) for s in single["stages"]]
    got = _weights(run)
    assert got.keys() == weights.keys()
    for k in got:
        a, b = got[k], weights[k]
        if k.endswith("attn.qkv.bias"):  # the key bias: float noise that Adam scales up (tests/test_ddp.py)
            d = a.numel() // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert torch.allclose(a, b, atol=1e-3, rtol=0), k
    return info


@pytest.fixture(scope="module")
def fsdp_layerwise(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fsdp") / "layerwise"
    _torchrun(*LAYERWISE, f"hydra.run.dir={run}", cwd=run.parent)
    return run


@pytest.mark.full
def test_fsdp_layerwise_matches_one_process_with_a_frozen_prefix_cached_per_rank(fsdp_layerwise, tmp_path):
    info = _assert_close(fsdp_layerwise, *_single(tmp_path, "single", *LAYERWISE))
    assert [s["name"] for s in info["stages"]] == ["greedy-block1", "greedy-block2", "finetune"]
    assert info["stages"][1]["cache"].startswith("on")  # block1 frozen: not sharded, its features cached
    assert_epochs_exactly_once(fsdp_layerwise)
    for name in ("model.safetensors", "checkpoints/best.pt", "checkpoints/stage-3-finetune.pt",
                 "checkpoints/last.dcp/manifest.json", "checkpoints/last.dcp/__1_0.distcp"):
        assert (fsdp_layerwise / name).exists(), name


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its workers (ours: started by this test), then wait until they are gone."""
    def tree(p: int) -> list[int]:
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True).stdout.split()
        return [p] + [q for k in kids for q in tree(int(k))]

    pids = tree(pid)
    for q in pids:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 30
    while any(Path(f"/proc/{q}").exists() and Path(f"/proc/{q}/stat").read_text().split()[2] != "Z" for q in pids):
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.full
def test_fsdp_kill_9_mid_epoch_resumes_bit_identical_and_one_process_reads_the_shards(fsdp_layerwise, tmp_path):
    run = tmp_path / "killed"
    env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)}
    proc = subprocess.Popen(_cmd(*LAYERWISE, f"hydra.run.dir={run}"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    manifest = run / "checkpoints" / "last.dcp" / "manifest.json"
    try:
        deadline = time.time() + 240
        while True:  # a sharded checkpoint in the middle of stage 2 (cached prefix, sharded helper)
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            try:
                pos = json.loads(manifest.read_text())["position"]
            except (OSError, ValueError):
                pos = {"stage": -1}
            if pos["stage"] == 1 and pos["batch"] > 0:
                break
            time.sleep(0.02)
    finally:
        _kill_tree(proc.pid)
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # nothing was recorded: a kill -9
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    _torchrun(*LAYERWISE, f"hydra.run.dir={run}", "resume=auto", cwd=tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert_epochs_exactly_once(run)
    ref, got = _weights(fsdp_layerwise), _weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # the same sharded checkpoint read by one process without a process group: DCP reshards 2 -> 1
    state = latest_state(RunDir(copy))
    assert state["sharded"].endswith("last.dcp") and state["position"]["stage"] == 1
    model = StagedModel(state["arch"])
    load_model(model, state)
    stage1 = torch.load(fsdp_layerwise / "checkpoints" / "stage-1-greedy-block1.pt", weights_only=True)["model"]
    frozen = [k for k in stage1 if k.startswith("blocks.block1.")]  # frozen in stage 2: the stage-1 weights
    assert frozen and all(torch.equal(model.state_dict()[k], stage1[k]) for k in frozen)
    index = sharded._metadata(Path(state["sharded"])).state_dict_metadata
    moments = {k[len("optim."):-len(".exp_avg")]: {"exp_avg": torch.zeros(tuple(v.size))}
               for k, v in index.items() if k.startswith("optim.") and k.endswith(".exp_avg")}
    assert any(k.startswith("helper.") for k in moments) and "model.blocks.block2.layer.weight" in moments
    assert not any(k.startswith("model.blocks.block1.") for k in moments)  # frozen: no optimizer state
    sharded.load_tensors(Path(state["sharded"]), {"optim": moments})  # whole tensors, from both ranks' shards
    assert all(e["exp_avg"].abs().sum() > 0 for e in moments.values())


@pytest.mark.full
def test_fsdp_transformer_scratch_with_activation_checkpointing_matches_one_process(tmp_path):
    run = tmp_path / "fsdp"
    _torchrun(*SCRATCH, "device.activation_checkpointing=true", f"hydra.run.dir={run}", cwd=tmp_path)
    _assert_close(run, *_single(tmp_path, "single", *SCRATCH))


@pytest.mark.full
def test_fsdp_insert_growth_keeps_the_probe_loss_and_matches_the_unsharded_weights(tmp_path):
    run = tmp_path / "fsdp"
    _torchrun(*GROW, f"hydra.run.dir={run}", cwd=tmp_path)
    _assert_close(run, *_single(tmp_path, "single", *GROW))
    growth = [e for e in read_metrics(run / "metrics.jsonl") if e.get("event") == "growth"]
    assert [op["op"] for e in growth for op in e["ops"]] == ["widen", "deepen", "deepen"]
    for e in growth:  # Net2Net widening and zero-output inserted blocks: the function is kept
        assert abs(e["probe_loss_after"] - e["probe_loss_before"]) <= 1e-5


@pytest.mark.full
def test_fsdp_lora_trains_only_the_adapters_and_matches_one_process(tmp_path):
    source = tmp_path / "source"
    train(make_cfg("strategy=scratch", *SMALL, "strategy.epochs=2", *COMMON, "device.threads=1"), source)
    lora = ["strategy=finetune", f"strategy.source={source}", "strategy.mode=lora", *SMALL, "train.epochs=2"]
    run = tmp_path / "fsdp"
    _torchrun(*lora, f"hydra.run.dir={run}", cwd=tmp_path)
    info = _assert_close(run, *_single(tmp_path, "single", *lora))
    weights = _weights(run)
    adapters = sum(v.numel() for k, v in weights.items() if "lora_" in k)
    head = sum(v.numel() for k, v in weights.items() if k.startswith("head."))
    assert adapters > 0 and info["stages"][0]["trainable_params"] == adapters + head
    src = _weights(source)  # the frozen backbone is the source's, bit for bit
    assert all(torch.equal(weights[k], src[k]) for k in src if k.startswith("blocks.") and k in weights)


CNN = ["strategy=scratch", "model=cnn", "dataset=synthetic", "dataset.n_train=800", "train.batch_size=32",
       "strategy.epochs=2", "checkpoint.every_steps=3"]


@pytest.mark.full
def test_fsdp_batchnorm_run_stopped_by_sigterm_resumes_bit_identical_buffers_included(tmp_path):
    """BatchNorm statistics are buffers, not sharded: DCP saves one rank's copy. It must be rank 0's (the
    copy the gathered model keeps), else the resumed run's running statistics differ (found in review:
    running_mean off by 4e-3 after a SIGTERM and resume=auto on 2 ranks, every weight equal)."""
    ref, run = tmp_path / "ref", tmp_path / "stopped"
    _torchrun(*CNN, f"hydra.run.dir={ref}", cwd=tmp_path)
    env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)}
    proc = subprocess.Popen(_cmd(*CNN, f"hydra.run.dir={run}"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    manifest = run / "checkpoints" / "last.dcp" / "manifest.json"
    try:
        deadline = time.time() + 240
        while True:  # a sharded checkpoint in the middle of the second epoch
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
            try:
                pos = json.loads(manifest.read_text())["position"]
            except (OSError, ValueError):
                pos = {"epoch": -1}
            if pos["epoch"] == 1 and pos["batch"] > 0:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"
    _torchrun(*CNN, f"hydra.run.dir={run}", "resume=auto", cwd=tmp_path)
    assert_epochs_exactly_once(run)
    want, got = _weights(ref), _weights(run)
    assert any("running_mean" in k for k in want)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []

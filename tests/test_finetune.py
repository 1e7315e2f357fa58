"""finetune: every invariant of ALGORITHMS.md "finetune", sources, errors, resume, end to end."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import (
    after_each_backward,
    assert_epochs_exactly_once,
    engine_for,
    final_weights,
    kill_when,
    make_cfg,
    optimizer_params,
    resume_until_done,
    run_cli,
    snapshot,
)
from safetensors.torch import load_file

from stagetrain.core.errors import StagetrainError
from stagetrain.growth.ops import add_lora, merge_lora
from stagetrain.models import StagedModel
from stagetrain.progress import Reporter
from stagetrain.runs.config import validate
from stagetrain.runs.parts import build_engine
from stagetrain.runs.runner import train

CPU = torch.device("cpu")
TARGET = "dataset.classes=[5,6,7,8,9]"


@pytest.fixture(scope="module")
def mlp_source(tmp_path_factory):
    """A scratch run on digits 0-4 (the source of the 0-4 -> 5-9 transfer)."""
    run = tmp_path_factory.mktemp("src") / "mlp"
    train(make_cfg("strategy=scratch", "dataset.classes=[0,1,2,3,4]", "model.widths=[256,256]"), run)
    return run


@pytest.fixture(scope="module")
def cnn_source(tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "cnn"
    train(make_cfg("strategy=scratch", "dataset.classes=[0,1,2,3,4]", "model=cnn", "train.epochs=3"), run)
    return run


def ft_cfg(source, mode, *extra):
    return make_cfg("strategy=finetune", f"strategy.source={source}", f"strategy.mode={mode}", TARGET, *extra)


def source_state(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode,frozen", [("linear_probe", ["block1", "block2"]), ("partial", ["block1"])])
def test_invariant1_frozen_tensors_bit_identical_and_optimizer_holds_exactly_the_trainable(cnn_source, mode, frozen):
    engine = engine_for(ft_cfg(cnn_source, mode, "strategy.freeze_blocks=1", "train.epochs=2"))
    before = {b: snapshot(engine.model.group(b)) for b in frozen}
    seen = []

    def check(opt):
        trainable = {id(p) for p in engine.model.parameters() if p.requires_grad}
        assert {id(p) for p in optimizer_params(opt)} == trainable
        with_grad = {id(p) for p in engine.model.parameters() if p.grad is not None}
        assert with_grad <= trainable
        for b in frozen:
            assert all(not p.requires_grad for p in engine.model.group(b).parameters())
        seen.append(1)

    with after_each_backward(check):
        engine.run()
    assert seen
    for b in frozen:
        now = engine.model.group(b).state_dict()
        assert all(torch.equal(before[b][k], now[k]) for k in now), f"{b} changed (incl. BN buffers)"


def test_invariant2_gradual_unfreeze_trains_the_scheduled_groups_each_epoch(mlp_source):
    engine = engine_for(ft_cfg(mlp_source, "gradual_unfreeze", "train.epochs=5"))
    schedule = [["head"], ["head", "block2"], ["block1", "block2", "head"]]
    assert [sorted(s.trainable) for s in engine.plan.stages] == [sorted(s) for s in schedule]
    observed = []

    def check(opt):
        groups = sorted(g for g in ["block1", "block2", "head"]
                        if any(p.requires_grad for p in engine.model.group(g).parameters()))
        observed.append((engine.state.stage, engine.state.cur.epoch, tuple(groups)))

    with after_each_backward(check):
        engine.run()
    per_epoch = {(s, e): g for s, e, g in observed}
    assert per_epoch[(0, 0)] == ("head",)
    assert per_epoch[(1, 0)] == ("block2", "head")
    assert per_epoch[(2, 0)] == per_epoch[(2, 2)] == ("block1", "block2", "head")


def test_invariant3_discriminative_lrs_equal_lr_top_times_decay_power(mlp_source):
    d, lr = 0.38, 0.004
    engine = engine_for(ft_cfg(mlp_source, "full", f"strategy.lr_decay={d}", f"strategy.lr={lr}",
                               "sched.name=constant", "train.epochs=1"))
    lrs = {}
    with after_each_backward(lambda opt: lrs.update({g["name"]: g["lr"] for g in opt.param_groups})):
        engine.run()
    groups = ["block1", "block2", "head"]  # K = 2 blocks, head is group K+1
    for i, g in enumerate(groups, 1):
        assert abs(lrs[g] - lr * d ** (len(groups) - i)) <= 1e-12


def test_invariant4_lp_ft_stage2_starts_with_the_probes_predictions(mlp_source, tmp_path):
    cfg = ft_cfg(mlp_source, "lp_ft", "train.epochs=4")
    from stagetrain.runs.rundir import RunDir

    rundir = RunDir(tmp_path / "run")
    rundir.checkpoints.mkdir(parents=True)
    engine = build_engine(cfg, CPU, rundir, Reporter("off"))[0]
    x = engine.data.normalize(engine.data.val.x)
    first = {}

    def check(opt):
        if engine.state.stage == 1 and not first:
            grads = {p: p.grad for p in engine.model.parameters()}
            with torch.no_grad():
                engine.model.eval()
                first["logits"] = engine.model(x)
                engine.model.train()
            assert grads  # the check itself changes no gradient

    with after_each_backward(check):
        engine.run()
    probe = StagedModel(engine.model.spec)
    probe.load_state_dict(torch.load(rundir.stage_checkpoint(0, "lp"), weights_only=True)["model"])
    with torch.no_grad():
        assert torch.equal(probe.eval()(x), first["logits"])


def test_invariant5_new_head_matches_target_classes_and_backbone_starts_as_source(mlp_source):
    engine = engine_for(ft_cfg(mlp_source, "full", "train.epochs=1"))
    assert engine.model.head.layer.out_features == 5
    src = source_state(mlp_source)
    for k, v in engine.model.state_dict().items():
        if k.startswith("blocks."):
            assert torch.equal(v, src[k]), k


def test_invariant6_lora_equals_base_at_init_and_merged_equals_adapters(mlp_source):
    base = StagedModel(torch.load(mlp_source / "checkpoints" / "best.pt", weights_only=True)["arch"]).double()
    base.load_state_dict({k: v.double() for k, v in source_state(mlp_source).items()})
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    adapted = add_lora(base, rank=3, alpha=6.0).eval()
    assert torch.equal(adapted(x), base.eval()(x))
    with torch.no_grad():
        for block in adapted.blocks.values():
            block.layer.lora_b.normal_()
    merged = merge_lora(adapted).eval()
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(x), adapted(x), atol=1e-10, rtol=1e-10)


def test_lora_run_trains_only_adapters_and_head_then_merges(mlp_source, tmp_path):
    info = train(ft_cfg(mlp_source, "lora", "train.epochs=5"), tmp_path / "run")  # at its default 10 x optim.lr
    resumable = final_weights(tmp_path / "run")  # last.pt: the adapters, before merging
    assert any("lora_b" in k for k in resumable)
    assert any(resumable[k].abs().sum() > 0 for k in resumable if "lora_b" in k), "adapters trained"
    src = source_state(mlp_source)
    for k in src:
        if k.startswith("blocks."):
            assert torch.equal(src[k], resumable[k]), f"{k}: base weights must stay frozen"
    shared = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert not any("lora" in k for k in shared), "merged at the end: a plain architecture"
    assert info["final"]["test/acc"] > 0.6


def test_invariant7_bitfit_changes_biases_only(mlp_source, tmp_path):
    train(ft_cfg(mlp_source, "bitfit", "train.epochs=2"), tmp_path / "run")
    src, got = source_state(mlp_source), final_weights(tmp_path / "run")
    for k in src:
        if k.startswith("blocks."):
            same = torch.equal(src[k], got[k])
            assert same != k.endswith("bias"), f"{k}: {'unchanged' if same else 'changed'}"


def test_invariant8_source_file_is_byte_identical_and_recorded(mlp_source, tmp_path):
    ckpt_file = mlp_source / "checkpoints" / "best.pt"
    before = sha(ckpt_file)
    info = train(ft_cfg(mlp_source, "full", "train.epochs=1"), tmp_path / "run")
    assert sha(ckpt_file) == before
    assert info["source"]["sha256"] == before and info["source"]["path"] == str(ckpt_file.resolve())


@pytest.mark.parametrize("kind", ["last.pt", "model.safetensors", "stage-1"])
def test_source_may_be_a_checkpoint_a_safetensors_or_a_stage(mlp_source, tmp_path, kind):
    if kind == "stage-1":
        cfg = ft_cfg(mlp_source, "linear_probe", "strategy.source_checkpoint=stage-1", "train.epochs=1")
    else:
        path = mlp_source / ("checkpoints/last.pt" if kind == "last.pt" else kind)
        cfg = ft_cfg(path, "linear_probe", "train.epochs=1")
    info = train(cfg, tmp_path / "run")
    assert info["status"] == "completed" and info["source"]["sha256"]


def test_linear_probe_uses_cached_backbone_features(mlp_source, tmp_path):
    info = train(ft_cfg(mlp_source, "linear_probe", "train.epochs=3"), tmp_path / "run")
    assert info["stages"][0]["cache"].startswith("on")


def test_add_layers_inserts_new_blocks_before_the_head(mlp_source, tmp_path):
    info = train(ft_cfg(mlp_source, "add_layers", "strategy.new_layers=2", "train.epochs=2"), tmp_path / "run")
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert [b["name"] for b in arch["blocks"]] == ["block1", "block2", "block3", "block4"]
    assert info["stages"][0]["trainable"] == ["block3", "block4", "head"]


BAD_SOURCES = [
    (["strategy.source=/nonexistent/run"], "does not exist"),
    (["strategy.source=FOREIGN"], "not a stagetrain checkpoint"),
    (["strategy.source=SRC", "strategy.head=reuse", "dataset.classes=[5,6,7]"], "strategy.head=reuse"),
    (["strategy.source=SRC", "dataset=mnist"], "input"),
]


@pytest.mark.parametrize("args,expected", BAD_SOURCES, ids=["missing", "foreign", "reuse-mismatch", "shape"])
def test_bad_sources_give_clear_errors(mlp_source, tmp_path, args, expected, idx_root):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    args = [a.replace("FOREIGN", str(foreign)).replace("SRC", str(mlp_source)) for a in args]
    proc = run_cli("strategy=finetune", *args, "progress=off", cwd=tmp_path, env={"STAGETRAIN_DATA": str(idx_root)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in out and "Traceback" not in out
    assert not list(tmp_path.rglob("run.json"))


def test_finetune_without_source_is_refused():
    with pytest.raises(StagetrainError, match="strategy.source"):
        validate(make_cfg("strategy=finetune"))


@pytest.mark.full  # a kill/resume or concurrency campaign: `pytest --full`
def test_resume_mid_gradual_unfreeze_restores_trainable_sets(mlp_source, tmp_path):
    args = ["strategy=finetune", f"strategy.source={mlp_source}", "strategy.mode=gradual_unfreeze",
            "strategy.unfreeze_every=2", "train.epochs=8", TARGET, "train.batch_size=4", "checkpoint.every_steps=20",
            "progress=off"]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    kill_when(run, args, tmp_path, lambda ev: any(e.get("split") == "val" and e["stage"] == 2 for e in ev))
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert [s["trainable"] for s in stages] == [["head"], ["head", "block2"], ["block1", "block2", "head"]]


@pytest.mark.parametrize("mode,extra", [("linear_probe", ["optim.lr=0.01"]), ("full", [])])
def test_digits_0_4_to_5_9_transfer_reaches_090(mlp_source, tmp_path, mode, extra):
    info = train(ft_cfg(mlp_source, mode, *extra), tmp_path / "run")
    assert info["final"]["test/acc"] >= 0.90


def test_in_run_supervised_pretraining_on_a_class_subset_then_fine_tune(tmp_path):
    info = train(make_cfg("strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.classes=[0,1,2,3,4]",
                          TARGET, "strategy.mode=gradual_unfreeze", "train.epochs=10"), tmp_path / "run")
    pretrain, *rest = info["stages"]
    assert pretrain["name"] == "pretrain" and pretrain["final"]["val/acc"] > 0.9  # on digits 0-4
    assert [s["name"] for s in rest] == ["unfreeze-1", "unfreeze-2", "unfreeze-3", "unfreeze-all"]
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert arch["head"]["out"] == 5 and info["source"]["pretrain"]["classes"] == [0, 1, 2, 3, 4]
    assert info["final"]["test/acc"] > 0.8


def test_mnist_to_fashion_mnist_in_one_run(idx_root, tmp_path):
    info = train(make_cfg("strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.dataset=mnist",
                          "strategy.pretrain.objective=denoising", "strategy.pretrain.epochs=1", "dataset=fashion_mnist",
                          f"dataset.root={idx_root}", "dataset.max_train=800", "model.widths=[128,64]",
                          "strategy.mode=full", "train.epochs=2"), tmp_path / "run")
    names = [s["name"] for s in info["stages"]]
    assert names == ["pretrain-greedy-block1", "pretrain-greedy-block2", "finetune-full"]
    assert info["stages"][0]["samples"] == 800 and "val/loss" in info["stages"][0]["final"]
    assert info["final"]["test/acc"] > 0.6  # the small IDX Fashion-MNIST of conftest, 800 images, 2 epochs


# ---- the L-BFGS probe stops at convergence (issue 28)

def test_lbfgs_probe_stops_at_convergence_with_the_fixed_pass_accuracy(mlp_source, tmp_path, monkeypatch):
    from stagetrain.engine import solver

    passes: list[int] = []
    step = solver.optimizer_step

    def counted(rt, stage, *args):
        out = step(rt, stage, *args)
        passes.append(out[2] if stage.optimizer == "lbfgs" else 0)
        return out

    monkeypatch.setattr(solver, "optimizer_step", counted)
    runs = {}
    for name, tols in (("fixed", (0.0, 0.0)), ("tolerance", (solver.GRAD_TOL, solver.CHANGE_TOL))):
        monkeypatch.setattr(solver, "GRAD_TOL", tols[0])
        monkeypatch.setattr(solver, "CHANGE_TOL", tols[1])
        passes.clear()
        info = train(ft_cfg(mlp_source, "linear_probe", "plots=false"), tmp_path / name)
        runs[name] = (info["final"]["test/acc"], sum(passes), info["stages"][-1]["flops"])
    (fixed_acc, fixed_passes, fixed_flops), (acc, used, flops) = runs["fixed"], runs["tolerance"]
    assert abs(acc - fixed_acc) <= 0.005, runs
    assert used < fixed_passes and flops < fixed_flops, runs

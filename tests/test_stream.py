"""Streamed data (dataset.storage=stream): the same batches as in memory, bit-identical
training, exact resume after kill -9 with loader workers and augmentation, and the
storage decision recorded."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    assert_epochs_exactly_once,
    final_weights,
    kill_mid_epoch,
    make_cfg,
    resume_until_done,
)

from stagetrain.core.errors import StagetrainError
from stagetrain.data import epoch_permutation
from stagetrain.data.augment import epoch_key
from stagetrain.data.stream import EpochLoader, sequential_batches
from stagetrain.datasets import load_data
from stagetrain.runs.runner import train

SMALL = ["strategy=scratch", "dataset=mnist", "model.widths=[64]", "train.batch_size=50", "progress=off",
         "plots=false"]


def _bundle(idx_root, *overrides):
    cfg = make_cfg(*SMALL, f"dataset.root={idx_root}", *overrides)
    return load_data(cfg.dataset, seed=0)


def _epoch_rows(n: int, epoch: int, bs: int = 50) -> list[torch.Tensor]:
    perm = epoch_permutation(n, 0, 0, epoch, torch.device("cpu"))
    return [perm[i:i + bs] for i in range(0, n, bs)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_reads_the_batches_memory_gathers(idx_root, workers):
    mem = _bundle(idx_root, "dataset.storage=memory")
    st = _bundle(idx_root, "dataset.storage=stream", f"dataset.workers={workers}")
    assert mem.info["storage"] == "memory" and st.info["storage"] == "stream" and st.train.streamed
    assert torch.equal(mem.mean, st.mean) and torch.equal(mem.std, st.std)  # statistics bit for bit
    assert torch.equal(mem.train.y, st.train.y) and torch.equal(mem.val.y, st.val.y)
    rows = _epoch_rows(len(mem.train), epoch=1)
    streamed = list(EpochLoader(st.train.x).epoch(rows[3:], key=epoch_key(0, 0, 1)))  # resumed at batch 3
    assert len(streamed) == len(rows) - 3
    for r, x in zip(rows[3:], streamed, strict=True):
        assert torch.equal(mem.train.x[r], x)
    for split in ("val", "test"):
        assert torch.equal(getattr(mem, split).x, torch.cat(list(sequential_batches(getattr(st, split).x, 128))))


def test_augmentation_is_a_function_of_sample_and_epoch_not_of_workers(idx_root):
    rows = _epoch_rows(300, epoch=0)[:4]
    got = {}
    for workers in (0, 2):
        st = _bundle(idx_root, "dataset.augment=flip_crop", f"dataset.workers={workers}")
        assert st.info["storage"] == "stream"
        loader = EpochLoader(st.train.x)
        got[workers] = [torch.cat(list(loader.epoch(rows, epoch_key(0, 0, e)))) for e in (0, 1)]
        plain = torch.cat([st.train.x[r] for r in rows])
    assert torch.equal(got[0][0], got[2][0]) and torch.equal(got[0][1], got[2][1])
    assert not torch.equal(got[0][0], got[0][1]), "epochs 1 and 2 augmented alike"
    assert not torch.equal(got[0][0], plain), "flip_crop changed nothing"


def test_memory_and_stream_train_to_bit_identical_weights(idx_root, tmp_path):
    args = [*SMALL, f"dataset.root={idx_root}", "train.epochs=2"]
    infos = {name: train(make_cfg(*args, *extra), tmp_path / name) for name, extra in {
        "memory": ["dataset.storage=memory"], "stream": ["dataset.storage=stream", "dataset.workers=2"]}.items()}
    ref, got = final_weights(tmp_path / "memory"), final_weights(tmp_path / "stream")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert infos["memory"]["final"] == infos["stream"]["final"]
    assert infos["stream"]["data"]["storage"] == "stream"
    assert infos["stream"]["data"]["storage_reason"] == "dataset.storage=stream"


@pytest.mark.parametrize("plan", [
    ["strategy=grow", "strategy.widths=[[16],[32]]", "strategy.epochs_per_stage=1", "strategy.final_epochs=1",
     "strategy.data_fractions=[0.5,1.0]"],  # a subset of the samples per stage, growth probes on val
    ["strategy=layerwise", "model.widths=[32,16]", "strategy.epochs_per_layer=2", "strategy.finetune.epochs=1"],
], ids=["grow_data_fractions", "layerwise_cache"])
def test_streamed_stages_train_as_in_memory(idx_root, tmp_path, plan):
    args = [*SMALL, f"dataset.root={idx_root}", *plan]
    infos = {st: train(make_cfg(*args, f"dataset.storage={st}", "dataset.workers=1"), tmp_path / st)
             for st in ("memory", "stream")}
    ref, got = final_weights(tmp_path / "memory"), final_weights(tmp_path / "stream")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert [s["cache"] for s in infos["memory"]["stages"]] == [s["cache"] for s in infos["stream"]["stages"]]
    if "strategy=layerwise" in plan:  # the streamed split's frozen-prefix features were cached too
        assert infos["stream"]["stages"][1]["cache"].startswith("on")


def test_auto_streams_what_exceeds_the_memory_budget_and_says_why(idx_root):
    data = _bundle(idx_root, "dataset.memory_budget=100000")  # 100 kB < 1200 x 784 bytes
    assert data.info["storage"] == "stream" and "exceed dataset.memory_budget" in data.info["storage_reason"]
    data = _bundle(idx_root)  # the default budget: half the free memory
    assert data.info["storage"] == "memory" and "fit in dataset.memory_budget" in data.info["storage_reason"]


@pytest.mark.parametrize("overrides, words", [
    (["dataset=digits", "dataset.storage=stream"], "dataset=digits is always read into memory"),
    (["dataset.augment=flip_crop", "dataset.storage=memory"], "needs a streamed dataset"),
    (["dataset.augment=rotate"], "dataset.augment='rotate' is not valid"),
    (["dataset.storage=disk"], "dataset.storage='disk' is not valid"),
])
def test_bad_storage_settings_are_refused_before_anything_runs(overrides, words):
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match=words):
        validate(make_cfg(*SMALL, *overrides))


@pytest.mark.full  # three runs, one killed: ~45 s on 2 busy cores; `pytest --full`
def test_sigkill_mid_epoch_while_streaming_with_workers_and_augmentation_resumes_bit_identical(idx_root, tmp_path):
    args = [*SMALL, f"dataset.root={idx_root}", "model.widths=[512,512]", "train.batch_size=16", "train.epochs=3",
            "dataset.augment=flip_crop", "dataset.workers=2", "checkpoint.every_steps=3"]
    reference = tmp_path / "reference"
    train(make_cfg(*args), reference)
    run = tmp_path / "killed"
    kill_mid_epoch(run, args, tmp_path)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["batch"] > 0, "expected a checkpoint inside an epoch"
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)
    assert json.loads((run / "run.json").read_text())["data"]["augment"] == "flip_crop"


@pytest.mark.full  # two torchrun launches of 2 processes: `pytest --full`
def test_streamed_shards_under_torchrun_train_as_the_in_memory_ones(idx_root, tmp_path):
    from test_ddp import run_torchrun

    weights = {}
    for storage in ("memory", "stream"):
        cwd = tmp_path / storage
        cwd.mkdir()
        run_torchrun(*SMALL, f"dataset.root={idx_root}", "train.epochs=2", f"dataset.storage={storage}",
                     "dataset.workers=1", f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
        info = json.loads((cwd / "run" / "run.json").read_text())
        assert info["distributed"]["world_size"] == 2 and info["data"]["storage"] == storage
        weights[storage] = final_weights(cwd / "run")
    assert all(torch.equal(weights["memory"][k], weights["stream"][k]) for k in weights["memory"])

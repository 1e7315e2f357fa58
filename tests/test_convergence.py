"""Issue 29, part 2: every stage is checked for under-training (still falling at its end, or
barely beyond its trivial baseline), the baselines are what their definitions say, and
``epochs=auto`` trains a stage to a plateau, reports its FLOPs and resumes exactly."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from conftest import engine_for, make_cfg

from stagetrain import checkpoint as ckpt
from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Plan, Stage
from stagetrain.data import DataBundle
from stagetrain.data.bundle import Split
from stagetrain.progress import Reporter
from stagetrain.runread import under_trained
from stagetrain.runs.banner import final_table
from stagetrain.runs.baselines import for_plan, stage_baseline
from stagetrain.runs.config import validate
from stagetrain.runs.convergence import convergence
from stagetrain.runs.parts import build_engine, build_parts
from stagetrain.runs.rundir import RunDir, read_metrics
from stagetrain.runs.runner import train

CPU = torch.device("cpu")
TINY = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.max_len=24",
        "dataset.max_len=24", "train.batch_size=16", "optim.lr=0.01", "plots=false", "train.epochs=1"]
MLM = ["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.objective=mlm"]


@pytest.fixture
def texts(tmp_path):
    """120 labelled texts, one fixed phrase per topic: an MLM learns them to a floor well below
    the byte-frequency model within 60 epochs (about 3 s of training)."""
    words = {"animals": "cat dog bird fish", "weather": "rain snow wind sun", "food": "bread rice soup tea"}
    rows = [{"text": w, "label": name} for name, w in words.items() for _ in range(40)]
    path = tmp_path / "topics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return ["dataset=text_classification", f"dataset.path={path}"]


def _hand_unigram(train_tokens: list[int], eval_tokens: list[int], vocab: int) -> float:
    counts = Counter(train_tokens)
    n = len(train_tokens) + vocab - 1  # add-one over the real ids 1..vocab-1
    return -sum(math.log((counts[t] + 1) / n) for t in eval_tokens) / len(eval_tokens)


def test_a_short_mlm_pretraining_is_flagged_and_a_converged_one_is_not(texts, tmp_path):
    short = train(make_cfg(*TINY, *texts, *MLM, "strategy.pretrain.epochs=2"), tmp_path / "short")
    pre = short["convergence"][0]
    assert (pre["name"], pre["objective"], pre["baseline_kind"]) == ("pretrain-mlm", "mlm", "unigram")
    assert pre["converged"] is False and pre["barely_learnt"] is True  # still descending, not past the unigram
    assert any(w.startswith("stage 1 (pretrain-mlm") and "still falling" in w for w in short["warnings"])
    assert any(w.startswith("stage 1 (pretrain-mlm") and "barely learnt" in w for w in short["warnings"])
    saved = json.loads((tmp_path / "short" / "run.json").read_text())
    assert saved["convergence"] == short["convergence"] and under_trained(saved)
    assert saved["baselines"]["source:mlm"]["value"] == pytest.approx(pre["baseline"])

    # the unigram baseline is the definition's, computed here from the run's own data
    source = build_parts(validate(make_cfg(*TINY, *texts, *MLM)), CPU).datasets["source"]
    tokens = lambda split: [int(t) for t in split.x.flatten() if t > 0]  # noqa: E731 - mlm: every real token
    assert pre["baseline"] == pytest.approx(_hand_unigram(tokens(source.train), tokens(source.val),
                                                          source.info["vocab_size"]), rel=1e-9)

    long = train(make_cfg(*TINY, *texts, *MLM, "strategy.pretrain.epochs=60"), tmp_path / "long")
    pre = long["convergence"][0]
    assert pre["converged"] is True and pre["barely_learnt"] is False and pre["beyond_baseline"] > 0.5
    assert not any("pretrain-mlm" in w for w in long["warnings"])


def _bundle(train_x, train_y, val_x, val_y, classes, labeled=None, info=None, scale=1.0, mean=0.0, std=1.0):
    return DataBundle("tiny", Split(train_x, train_y), Split(val_x, val_y), Split(val_x, val_y),
                      torch.arange(len(train_y)) if labeled is None else labeled, tuple(train_x.shape[1:]), classes,
                      torch.tensor(mean), torch.tensor(std), scale, info or {})


def test_baselines_match_a_hand_computation_on_tiny_data():
    # majority: fitted on the labelled subset only (classes 0,0,1,2 -> 0), scored on val
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    data = _bundle(torch.zeros(6, 2), y, torch.zeros(4, 2), torch.tensor([0, 1, 2, 2]), 3, labeled=torch.arange(4))
    got = stage_baseline(Stage("s", 1, ["head"]), data, "standardize")
    prior = [3 / 7, 2 / 7, 2 / 7]  # (count + 1) / (4 + 3)
    assert got["kind"] == "majority" and got["metric"] == "acc"
    assert got["value"] == pytest.approx(0.25) and got["split"] == "val"
    assert got["loss"] == pytest.approx(-(math.log(prior[0]) + math.log(prior[1]) + 2 * math.log(prior[2])) / 4)

    # unigram: lm windows predict y; lm on padded texts the tokens after the first; mlm every real token
    x = torch.tensor([[1, 1, 2, 0], [3, 1, 0, 0]])
    vx = torch.tensor([[2, 1, 0, 0], [3, 3, 3, 0]])
    windows = _bundle(x, torch.tensor([[1, 2, 0, 0], [2, 3, 0, 0]]), vx, torch.tensor([[2, 2, 0, 0], [3, 1, 0, 0]]),
                      4, info={"vocab_size": 4})
    assert stage_baseline(Stage("lm", 1, ["head"], objective="lm"), windows, "standardize")["value"] == \
        pytest.approx(_hand_unigram([1, 2, 2, 3], [2, 2, 3, 1], 4))
    padded = Stage("p", 1, ["helper"], objective="lm", helper={"kind": "lm_head", "in": 8, "out": 4, "targets": "tokens"})
    assert stage_baseline(padded, windows, "standardize")["value"] == pytest.approx(_hand_unigram([1, 2, 1], [1, 3, 3], 4))
    mlm = Stage("m", 1, ["helper"], objective="mlm", helper={"kind": "lm_head", "in": 8, "out": 4, "targets": "tokens"})
    assert stage_baseline(mlm, windows, "standardize")["value"] == pytest.approx(
        _hand_unigram([1, 1, 2, 3, 1], [2, 1, 3, 3, 3], 4))

    # mean image: the loss of a reconstruction that is always the training mean, in the stage's input units
    images = _bundle(torch.tensor([[0.0, 2.0], [2.0, 4.0]]), torch.zeros(2, dtype=torch.long),
                     torch.tensor([[1.0, 1.0]]), torch.zeros(1, dtype=torch.long), 1, scale=4.0, mean=0.5, std=0.25)
    ae = Stage("g", 1, ["block1", "helper"], objective="autoencoder", stop_block=1, data="all")
    assert stage_baseline(ae, images, "unit")["value"] == pytest.approx(((0.25 - 0.25) ** 2 + (0.25 - 0.75) ** 2) / 2)
    # standardised, (x / 4 - 0.5) / 0.25: training [[-2, 0], [0, 2]] (mean [-1, 1]), validation [-1, -1]
    assert stage_baseline(ae, images, "standardize")["value"] == pytest.approx(((-1 + 1) ** 2 + (-1 - 1) ** 2) / 2)
    assert stage_baseline(Stage("g2", 1, ["block2", "helper"], objective="denoising", stop_block=2), images,
                          "unit") is None  # a deeper block's input is features the run changes: no baseline
    table, per_stage = for_plan(Plan("t", [ae, Stage("s", 1, ["head"])]), {"target": images})
    assert set(table) == {"mean_image", "accuracy"} and per_stage[0]["kind"] == "mean_image"


def test_barely_learnt_and_old_run_records():
    stages = [{"stage": 1, "name": "probe", "objective": "supervised", "epochs": 1, "final": {"val/acc": 0.15}},
              {"stage": 2, "name": "ae", "objective": "autoencoder", "epochs": 1, "final": {"val/loss": 0.5}}]
    base = [{"kind": "majority", "metric": "acc", "value": 0.1}, {"kind": "mean_image", "metric": "loss", "value": 1.0}]
    entries = convergence(stages, [], base)
    assert entries[0]["beyond_baseline"] == pytest.approx(0.05 / 0.9) and entries[0]["barely_learnt"] is True
    assert entries[1]["beyond_baseline"] == pytest.approx(0.5) and entries[1]["barely_learnt"] is False
    assert entries[0]["converged"] is None  # one epoch: not judged
    assert under_trained({"convergence": entries})
    table = final_table({"convergence": entries}).splitlines()
    assert "chance" in table[1] and "0.1 (majority)" in table[2] and table[2].endswith("?, BARELY LEARNT")
    assert table[3].split()[-1] == "?" and "50%" in table[3]  # one epoch: not judged; half-way from chance to 0
    assert not under_trained({"convergence": [{**e, "barely_learnt": False} for e in entries]})
    for old in ({}, {"status": "completed", "warnings": ["x"]}, {"convergence": None}, {"convergence": "?"}, []):
        assert under_trained(old) is False  # recorded before the check: unknown, never a crash


def _engine(cfg, run, resumed=None, on_update=None):
    rundir = RunDir(run)
    rundir.checkpoints.mkdir(parents=True, exist_ok=True)
    return build_engine(cfg, CPU, rundir, Reporter("off"), resumed, on_update=on_update)[0]


class Killed(Exception):
    pass


def test_auto_epochs_stop_on_a_plateau_report_their_flops_and_resume_exactly(texts, tmp_path, capsys):
    args = [*TINY, *texts, *MLM, "strategy.pretrain.epochs=auto", "strategy.pretrain.auto.max_epochs=60",
            "strategy.pretrain.auto.patience=2", "strategy.pretrain.auto.min_delta=0.01"]
    dry = train(make_cfg(*args, "dry_run=true"), None)
    assert "auto (max" in capsys.readouterr().out  # the table's epochs column (wrapped to its width)
    assert dry["plan"]["stages"][0]["auto"] == {"patience": 2, "min_delta": 0.01} and dry["estimates"][0]["epochs"] == 60
    at_max = train(make_cfg(*TINY, *texts, *MLM, "strategy.pretrain.epochs=60", "dry_run=true"), None)
    assert dry["estimates"][0]["flops"] == at_max["estimates"][0]["flops"]  # the dry run counts the max
    cfg = make_cfg(*args)
    ref = _engine(cfg, tmp_path / "ref")
    ref.run()
    pre = ref.state.summaries[0]
    assert pre["stop_reason"] == "plateau" and 2 < pre["epochs"] < 60
    epochs = [e for e in read_metrics(tmp_path / "ref" / "metrics.jsonl") if e.get("split") == "val" and e["stage"] == 1]
    assert pre["flops"] == pytest.approx(pre["epochs"] * epochs[0]["flops"])  # every epoch charged, no more

    stop_at = pre["epochs"] - 1  # killed right after this epoch's checkpoint: one epoch into the plateau's patience

    def kill(engine):
        if engine.state.stage == 0 and engine.state.cur.epoch == stop_at:
            raise Killed

    with pytest.raises(Killed):
        _engine(cfg, tmp_path / "killed", on_update=kill).run()
    saved = ckpt.load(RunDir(tmp_path / "killed").last)
    assert saved["run_state"]["plateau_bad"] == 1 and saved["run_state"]["plateau_best"] is not None
    resumed = _engine(cfg, tmp_path / "killed", resumed=saved)
    resumed.run()
    got = resumed.state.summaries[0]
    assert (got["epochs"], got["stop_reason"], got["flops"]) == (pre["epochs"], "plateau", pre["flops"])
    ref_w, got_w = ref.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    lines = Counter((e["stage"], e["epoch"], e["split"]) for e in read_metrics(tmp_path / "killed" / "metrics.jsonl")
                    if "split" in e)
    assert set(lines.values()) == {1}


def test_layerwise_epochs_per_layer_auto_plans_each_greedy_stage_to_a_plateau():
    stages = engine_for(make_cfg("strategy.epochs_per_layer=auto", "strategy.auto.max_epochs=7",
                                 "plots=false")).plan.stages
    greedy = [s for s in stages if s.name.startswith("greedy-")]
    assert greedy and all(s.epochs == 7 and s.auto == {"patience": 3, "min_delta": 0.005} for s in greedy)
    assert all(s.auto is None for s in stages if s not in greedy)
    for bad in ("strategy.epochs_per_layer=soon", "strategy.epochs_per_layer=0"):
        with pytest.raises(StagetrainError, match="epochs_per_layer"):
            validate(make_cfg(bad))
    with pytest.raises(StagetrainError, match="strategy.auto"):
        validate(make_cfg("strategy.epochs_per_layer=auto", "strategy.auto.patience=0"))


@pytest.mark.parametrize("objective", ["autoencoder", "rbm"])
def test_every_greedy_stage_is_judged_and_block1_is_compared_with_the_mean_image(objective, tmp_path):
    """Unsupervised greedy stages are judged on their validation loss (an RBM's mean-field
    reconstruction error, never its CD loss); block 1 reconstructs the raw input, so its
    chance is the mean image's loss; deeper blocks have none; the fine-tune stage, majority."""
    rbm = ["model.activation=sigmoid", "model.bn=false"] if objective == "rbm" else []
    info = train(make_cfg(f"strategy.objective={objective}", *rbm, "strategy.epochs_per_layer=3", "train.epochs=3",
                          "dataset.max_train=300", "plots=false"), tmp_path / objective)
    entries = {e["name"]: e for e in info["convergence"]}
    assert [e["name"] for e in info["convergence"]] == [s["name"] for s in info["stages"]]
    first = entries["greedy-block1"]
    assert first["baseline_kind"] == "mean_image" and first["metric"] == "loss" and first["baseline"] > 0
    assert first["final"] == pytest.approx(info["stages"][0]["final"]["val/loss"])
    assert first["judged_on"] == "validation loss" and first["converged"] is not None
    assert info["baselines"]["mean_image"]["value"] == pytest.approx(first["baseline"])
    assert entries["greedy-block2"]["baseline"] is None and entries["greedy-block2"]["baseline_kind"] is None
    assert entries["finetune"]["baseline_kind"] == "majority" and entries["finetune"]["metric"] == "acc"


def test_grow_stages_before_growth_are_reported_but_mark_no_run_under_trained(tmp_path, capsys):
    """Progressive growth trains each intermediate size briefly on purpose: those stages are
    recorded (and still falling here) but only the final size's stage can flag the run."""
    grow = ["strategy=grow", "plots=false"]  # the default schedule on digits
    info = train(make_cfg(*grow), tmp_path / "grow")
    entries = info["convergence"]
    assert [e["before_growth"] for e in entries] == [True, True, False]
    assert entries[-1]["converged"] is True and not under_trained(info)
    assert not any("grow-1" in w or "grow-2" in w for w in info["warnings"])
    assert "(then grown)" in final_table(info)
    short = train(make_cfg(*grow, "strategy.final_epochs=3"), tmp_path / "short")
    assert short["convergence"][-1]["converged"] is False and under_trained(short)


def test_a_fine_tune_carries_its_source_runs_under_training(tmp_path):
    """A fine-tune builds on its source run's stages: a source still falling at its end flags
    the fine-tune (source.under_trained, a warning); a converged source does not."""
    short = train(make_cfg("strategy=scratch", "train.epochs=3", "plots=false"), tmp_path / "short")
    done = train(make_cfg("strategy=scratch", "train.epochs=20", "plots=false"), tmp_path / "done")
    assert under_trained(short) and not under_trained(done)
    tune = ["strategy=finetune", "strategy.mode=full", "train.epochs=20", "plots=false"]
    on_short = train(make_cfg(*tune, f"strategy.source={tmp_path / 'short'}"), tmp_path / "ft_short")
    on_done = train(make_cfg(*tune, f"strategy.source={tmp_path / 'done'}"), tmp_path / "ft_done")
    assert on_short["source"]["under_trained"] is True and under_trained(on_short)
    assert any("the source run" in w and "under-trained" in w for w in on_short["warnings"])
    assert on_done["source"]["under_trained"] is False
    assert not any("the source run" in w for w in on_done["warnings"])

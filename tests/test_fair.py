"""Fair comparisons: t-intervals over seeds, the paired difference to the control arm and
its verdict (against hand-computed values), and the report and sweep summary that show them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import engine_for, make_cfg

from stagetrain.report import command as report
from stagetrain.report import compare, stats
from stagetrain.runs.runner import train


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_matches_the_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_mean_interval_and_paired_difference_by_hand():
    # 0.90, 0.92, 0.94: mean 0.92, s = 0.02, se = 0.02 / sqrt(3), t(0.975, 2) = 4.3027
    mean, half = stats.mean_ci([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and half == pytest.approx(4.3027 * 0.02 / math.sqrt(3), abs=1e-5)
    # per-seed differences 0.02, 0.03, 0.04: mean 0.03, s = 0.01 -> [0.00516, 0.05484]: better
    d = stats.paired({0: 0.90, 1: 0.92, 2: 0.94, 7: 0.5}, {0: 0.88, 1: 0.89, 2: 0.90})
    assert d["n"] == 3 and d["diff"] == pytest.approx(0.03)
    assert d["low"] == pytest.approx(0.03 - 4.3027 * 0.01 / math.sqrt(3), abs=1e-5)
    assert stats.verdict(d["low"], d["high"]) == "better"
    assert stats.verdict(-0.05, -0.01) == "worse"
    assert stats.verdict(-0.01, 0.02) == "no evidence"
    assert stats.verdict(0.01, 0.02, higher_is_better=False) == "worse"  # a loss went up
    assert stats.verdict(*[stats.mean_ci([0.9])[1]] * 2) == "no evidence"  # one seed: no interval


def test_report_gives_interval_paired_difference_and_verdict(tmp_path, capsys):
    """Two arms x two seeds of real (tiny) runs: the report's numbers are the ones computed by
    hand from the runs' own run.json files."""
    tiny = ["train.epochs=1", "dataset.max_train=300", "plots=false"]
    acc = {}
    for strategy in ("scratch", "grow"):
        for seed in (0, 1):
            info = train(make_cfg(f"strategy={strategy}", f"seed={seed}", *tiny), tmp_path / f"{strategy}{seed}")
            acc[strategy, seed] = info["final"]["test/acc"]
    md = tmp_path / "cmp.md"
    assert report.main([str(tmp_path), "--group-by", "strategy", "--markdown", str(md),
                        "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert "verdict: test/acc of the arm minus its control (strategy=scratch" in out
    rows, _ = report.load_rows(report.find_runs([tmp_path]))
    groups = compare.with_intervals(report.group_rows(rows, ["strategy"]), rows, ["strategy"])
    grow = next(g for g in groups if g["strategy"] == "grow")
    diffs = [acc["grow", s] - acc["scratch", s] for s in (0, 1)]
    half = 12.7062 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)  # s of 2 values = |a-b|/sqrt2
    assert grow["pairs"] == 2 and grow["diff"] == pytest.approx(sum(diffs) / 2)
    assert grow["diff low"] == pytest.approx(sum(diffs) / 2 - half, abs=1e-4)
    assert grow["verdict"] in stats.VERDICTS and "verdict" not in next(g for g in groups if g["strategy"] == "scratch")
    assert "| grow |" in md.read_text() and "verdict" in md.read_text()
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "grow0" / "run.json").read_text())["status"] == "completed"


def test_linear_probe_at_defaults_trains_and_an_under_trained_one_is_flagged(tmp_path):
    """Digits 0-4 -> 5-9, everything at defaults (issue 17: 0.40 before the full-batch L-BFGS
    probe). The old setting (Adam at the run's LR, 1x epochs) is flagged as under-trained."""
    source = tmp_path / "source"
    train(make_cfg("strategy=scratch", "dataset.classes=[0,1,2,3,4]", "plots=false"), source)
    target = ["strategy=finetune", f"strategy.source={source}", "dataset.classes=[5,6,7,8,9]",
              "strategy.mode=linear_probe", "plots=false"]
    info = train(make_cfg(*target), tmp_path / "probe")
    assert info["final"]["test/acc"] >= 0.90, info["final"]
    assert info["warnings"] == []
    stage = info["stages"][0]
    assert stage["steps"] == stage["epochs"] == 5  # one full-batch L-BFGS step per epoch
    old = train(make_cfg(*target, "strategy.probe=gradient", "strategy.probe_lr=null", "strategy.probe_epochs=20"),
                tmp_path / "old")
    assert old["final"]["test/acc"] < 0.6
    assert any("linear-probe" in w and "still falling" in w for w in old["warnings"])
    saved = json.loads((tmp_path / "old" / "run.json").read_text())
    assert saved["warnings"] == old["warnings"]


def test_an_uncached_probe_charges_its_frozen_backbone_once_per_step_not_per_line_search_pass(tmp_path):
    """Without the feature cache each L-BFGS step runs the frozen blocks once and the head for
    every loss evaluation: 5 steps cost about 5 backbone passes over the data more than the
    cached probe's one, not one per evaluation (~300)."""
    args = ["strategy=finetune", "strategy.source=random", "strategy.mode=linear_probe", "dataset.classes=[5,6,7,8,9]",
            "model.widths=[256,256]", "plots=false"]
    cached = train(make_cfg(*args, "strategy.cache=on"), tmp_path / "cached")
    plain = train(make_cfg(*args, "strategy.cache=off"), tmp_path / "plain")
    assert plain["final"]["test/acc"] == pytest.approx(cached["final"]["test/acc"])
    assert cached["flops"] < plain["flops"] <= 6 * cached["flops"]


def test_bitfit_at_defaults_trains_and_at_the_runs_lr_is_flagged(tmp_path):
    """BitFit trains a few biases and a new head on a frozen backbone: at the run's LR (1e-3,
    10 epochs) it stopped at 0.66 on digits 0-4 -> 5-9, still descending; its default factor
    (30 x optim.lr) trains it."""
    source = tmp_path / "source"
    train(make_cfg("strategy=scratch", "dataset.classes=[0,1,2,3,4]", "model.widths=[128,128]", "plots=false"), source)
    target = ["strategy=finetune", f"strategy.source={source}", "dataset.classes=[5,6,7,8,9]",
              "strategy.mode=bitfit", "train.epochs=10", "plots=false"]
    assert engine_for(make_cfg(*target)).plan.stages[0].lr == pytest.approx(0.03)
    info = train(make_cfg(*target), tmp_path / "bitfit")
    assert info["final"]["test/acc"] >= 0.85, info["final"]
    assert not any("still falling" in w for w in info["warnings"])
    slow = train(make_cfg(*target, "strategy.lr_factor=1"), tmp_path / "slow")
    assert slow["final"]["test/acc"] < info["final"]["test/acc"]
    assert any("bitfit" in w and "still falling" in w for w in slow["warnings"])


@pytest.mark.parametrize("args", [
    ["strategy=finetune", "strategy.source=random", "strategy.mode=gradual_unfreeze"],
    ["strategy=finetune", "strategy.source=random", "strategy.mode=lp_ft"],
    ["strategy=layerwise", "strategy.finetune.head_warmup_epochs=3"],
])
def test_every_head_only_stage_is_a_full_batch_probe_by_default(args):
    """Head warm-ups (gradual unfreezing's first stage, LP-FT's LP, layer-wise fine-tuning's
    warm-up) solve the head on frozen features with L-BFGS rather than a few epochs at the run's LR."""
    stages = engine_for(make_cfg(*args, "plots=false")).plan.stages
    heads = [st for st in stages if st.trainable == ["head"]]
    assert len(heads) == 1 and heads[0].optimizer == "lbfgs" and heads[0].sched == "constant"
    later = stages[stages.index(heads[0]) + 1:]
    assert later and all(st.optimizer == "adam" for st in later)


def test_a_falling_loss_on_a_learnt_training_set_is_not_a_warning():
    from stagetrain.runs.convergence import stage_warnings

    def events(accs):
        losses = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
        return [{"split": "train", "stage": 1, "stage_name": "s", "loss": v, "acc": a} for v, a in zip(losses, accs, strict=True)]

    assert stage_warnings(events([0.6, 0.8, 0.9, 0.95, 0.995, 1.0]), 10) == []
    assert "still falling" in stage_warnings(events([0.6, 0.8, 0.85, 0.9, 0.92, 0.95]), 10)[0]


def test_readme_rbm_example_reaches_095_on_digits(tmp_path):
    info = train(make_cfg("strategy.objective=rbm", "model.activation=sigmoid", "strategy.finetune.lr=0.01",
                          "plots=false"), tmp_path / "rbm")
    assert info["final"]["test/acc"] >= 0.95, info["final"]


def test_equal_flops_scratch_control_gets_the_staged_runs_flops_within_one_step(tmp_path):
    """compare.scratch=true on a layer-wise run: a scratch run of the same final architecture
    in <run>/control, stopped within one optimizer step of the staged run's training FLOPs,
    recorded in run.json, and the report pairs the run with its own control."""
    from stagetrain.app.api import run

    info = run(["strategy=layerwise", "strategy.epochs_per_layer=1", "train.epochs=2", "dataset.max_train=300",
                "compare.scratch=true", "plots=false", "progress=off"], run_dir=tmp_path / "staged")
    control = json.loads((tmp_path / "staged" / "control" / "run.json").read_text())
    assert control["status"] == "completed" and control["strategy"] == "scratch"
    stage = control["stages"][0]
    one_step = stage["flops"] / stage["steps"]
    assert 0 <= control["flops"] - info["flops"] < one_step + 1e-6 * info["flops"]
    assert info["control"]["flops"] == control["flops"] and info["control"]["final"] == control["final"]
    from safetensors import safe_open

    arch = [safe_open(str(p / "model.safetensors"), "pt").metadata()["arch"]
            for p in (tmp_path / "staged", tmp_path / "staged" / "control")]
    assert json.loads(arch[0]) == json.loads(arch[1])
    rows, _ = report.load_rows(report.find_runs([tmp_path]))
    staged = [r for r in rows if r["strategy"] == "layerwise"]
    g = compare.with_intervals(report.group_rows(staged, ["strategy"]), rows, ["strategy"])[0]
    assert g["vs"] == "own equal-FLOPs scratch" and g["pairs"] == 1
    assert g["diff"] == pytest.approx(info["final"]["test/acc"] - control["final"]["test/acc"])


def _poison_test_labels(monkeypatch):
    """Every run's test labels shifted by one class: test accuracy collapses, validation is untouched."""
    import stagetrain.runs.parts

    real = stagetrain.runs.parts.load_data

    def poisoned(ds, seed, *args):
        bundle = real(ds, seed, *args)
        bundle.test.y = (bundle.test.y + 1) % bundle.num_classes
        return bundle

    monkeypatch.setattr(stagetrain.runs.parts, "load_data", poisoned)


def test_tune_selects_on_validation_only_and_records_the_search(tmp_path, monkeypatch):
    from stagetrain.runs.tune import run_search

    args = ["strategy=scratch", "train.epochs=2", "dataset.max_train=300", "plots=false",
            "tune.lr=[0.00001,0.003,0.3]"]
    clean = run_search(make_cfg(*args), tmp_path / "clean")
    search = clean["tune"]["search"]
    assert [t["optim.lr"] for t in search] == [0.00001, 0.003, 0.3] and clean["tune"]["trials"] == 3
    best = max(search, key=lambda t: t["val/acc"])
    assert clean["tune"]["selected"]["optim.lr"] == best["optim.lr"]
    assert clean["final"]["test/acc"] == best["test/acc"]  # the selected trial's test metric is reported
    assert clean["flops"] == pytest.approx(sum(t["flops"] for t in search))  # the whole search's budget
    assert clean["config"]["tune"]["lr"] == [0.00001, 0.003, 0.3]
    assert json.loads((tmp_path / "clean" / "run.json").read_text())["tune"] == clean["tune"]
    assert not any(w.startswith("tune:") for w in clean["warnings"])  # the middle value won

    _poison_test_labels(monkeypatch)
    poisoned = run_search(make_cfg(*args), tmp_path / "poisoned")
    assert poisoned["final"]["test/acc"] < 0.25 < clean["final"]["test/acc"]  # the poison reached the test split
    assert poisoned["tune"]["selected"]["optim.lr"] == clean["tune"]["selected"]["optim.lr"]
    rows, _ = report.load_rows([p for p in report.find_runs([tmp_path]) if p.parent.name != "tune"])
    assert len(rows) == 2  # one row per job, not per trial


def test_seeds_of_a_tuned_arm_that_select_different_settings_stay_one_group(tmp_path):
    """A tuned job's run.json holds its selected trial's config; two seeds of one arm that
    select different learning rates are still one arm in the report and the sweep summary."""
    import shutil

    from stagetrain.runs.tune import run_search

    run_search(make_cfg("strategy=scratch", "train.epochs=1", "dataset.max_train=300", "plots=false",
                        "tune.lr=[0.00001,0.003]"), tmp_path / "0")
    shutil.copytree(tmp_path / "0", tmp_path / "1")
    info = json.loads((tmp_path / "1" / "run.json").read_text())
    info["config"]["seed"] = 1
    info["config"]["optim"]["lr"] = 0.00001 if info["config"]["optim"]["lr"] == 0.003 else 0.003
    (tmp_path / "1" / "run.json").write_text(json.dumps(info))
    rows, varying = report.load_rows([tmp_path / "0", tmp_path / "1"])
    assert varying == ["seed"] and {r.get("optim.lr") for r in rows} == {None}
    [group] = report.group_rows(rows, ["strategy"])
    assert group["runs"] == 2


def test_a_setting_selected_at_the_edge_of_its_grid_is_warned_about(tmp_path):
    from stagetrain.runs.tune import run_search

    info = run_search(make_cfg("strategy=scratch", "train.epochs=1", "dataset.max_train=300", "plots=false",
                               "tune.lr=[0.000001,0.00001,0.0001]"), tmp_path / "job")
    assert info["tune"]["selected"]["optim.lr"] == 0.0001
    assert any("optim.lr=0.0001 is the largest value searched" in w for w in info["warnings"])


def test_tune_is_refused_with_bad_values_or_with_the_untuned_control():
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match="tune.lr"):
        validate(make_cfg("tune.lr=[0.001,-1]"))
    with pytest.raises(StagetrainError, match="compare.scratch"):
        validate(make_cfg("tune.lr=[0.001]", "compare.scratch=true"))


def test_tune_grid_searches_the_product_of_any_training_keys(tmp_path):
    """tune.lr x tune.grid: every setting is a trial in its own folder with its settings
    applied; the selected one is the best on validation and its test metric is reported."""
    from stagetrain.runs.tune import run_search

    cfg = make_cfg("strategy=scratch", "train.epochs=2", "dataset.max_train=300", "plots=false",
                   "tune.lr=[0.0001,0.003]", "tune.grid={optim.name:[sgd,adam],train.batch_size:[32]}")
    info = run_search(cfg, tmp_path / "job")
    search = info["tune"]["search"]
    assert info["tune"]["keys"] == ["optim.lr", "optim.name", "train.batch_size"] and len(search) == 4
    names = sorted(p.name for p in (tmp_path / "job" / "tune").iterdir())
    assert names == ["optim.lr=0.0001,optim.name=adam,train.batch_size=32", "optim.lr=0.0001,optim.name=sgd,train.batch_size=32",
                     "optim.lr=0.003,optim.name=adam,train.batch_size=32", "optim.lr=0.003,optim.name=sgd,train.batch_size=32"]
    for row in search:  # each trial trained with its own settings
        trial = json.loads((tmp_path / "job" / "tune" / Path(row["run_dir"]).name / "run.json").read_text())
        assert (trial["config"]["optim"]["name"], trial["config"]["optim"]["lr"]) == (row["optim.name"], row["optim.lr"])
        assert trial["config"]["train"]["batch_size"] == 32
    best = max(search, key=lambda t: t["val/acc"])
    assert {k: info["tune"]["selected"][k] for k in info["tune"]["keys"]} == {k: best[k] for k in info["tune"]["keys"]}
    assert info["final"]["test/acc"] == best["test/acc"]
    assert info["flops"] == pytest.approx(sum(t["flops"] for t in search))


@pytest.mark.parametrize(("grid", "match"), [
    ("{seed:[0,1]}", "cannot be searched"),
    ("{dataset.classes:[[0,1]]}", "cannot be searched"),
    ("{optim.lrr:[0.1]}", "not a setting of this run"),
    ("{optim.weight_decay:[]}", "non-empty list"),
    ("{optim.lr:[0.1]}", "optim.lr is tune.lr"),
])
def test_tune_grid_refuses_keys_that_define_the_job_and_unknown_or_empty_ones(grid, match):
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match=match):
        validate(make_cfg(f"tune.grid={grid}", "tune.lr=[0.001]"))


def test_a_search_resumes_only_its_own_trials_and_never_shares_a_folder(tmp_path):
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.tune import run_search

    args = ["strategy=scratch", "train.epochs=1", "dataset.max_train=300", "plots=false", "tune.lr=[0.001,0.003]"]
    first = run_search(make_cfg(*args), tmp_path / "job")
    again = run_search(make_cfg(*args, "resume=auto"), tmp_path / "job")  # the same search: its trials are reused
    assert again["tune"]["search"] == first["tune"]["search"]
    with pytest.raises(StagetrainError, match=r"other settings \(train.epochs\)"):
        run_search(make_cfg(*args[:1], "train.epochs=2", *args[2:], "resume=auto"), tmp_path / "job")
    (tmp_path / "job" / "run.json").unlink()  # a search that stopped before its summary: still not a new one
    with pytest.raises(StagetrainError, match="already"):
        run_search(make_cfg(*args), tmp_path / "job")
    close = run_search(make_cfg(*args[:-1], "tune.grid={optim.weight_decay:[0.0001,0.000100000001]}"), tmp_path / "two")
    assert len({t["run_dir"] for t in close["tune"]["search"]}) == 2  # 6 significant digits would merge them
    with pytest.raises(StagetrainError, match="same setting twice"):
        run_search(make_cfg(*args[:-1], "tune.grid={optim.weight_decay:[0.0001,0.0001]}"), tmp_path / "twice")


def test_tune_grid_value_of_the_wrong_kind_is_refused_before_any_trial(tmp_path):
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.tune import run_search

    with pytest.raises(StagetrainError, match="train.batch_size"):
        run_search(make_cfg("strategy=scratch", "tune.grid={train.batch_size:[32,big]}"), tmp_path / "job")
    assert not (tmp_path / "job" / "tune").exists()

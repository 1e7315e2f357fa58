"""Multirun sweeps: the end-of-sweep summary, failed jobs, ``resume=auto`` over a sweep,
TensorBoard event files, and the shipped ``experiment=`` configs."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA_ROOT, assert_epochs_exactly_once, make_cfg, run_cli

from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TINY = ["train.epochs=1", "progress=off", "plots=false"]


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((sweep / "summary.csv").read_text())))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f"{path} is not a real plot"


def test_sweep_writes_summary_table_groups_and_plots(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "strategy=scratch,grow", "seed=0,1", "train.epochs=2", "progress=off",
                   "plots=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = summary_rows(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert sorted(r["strategy"] for r in rows) == ["grow", "grow", "scratch", "scratch"]
    assert all(r["status"] == "completed" and 0 < float(r["test/acc"]) <= 1 for r in rows)
    markdown = (sweep / "summary.md").read_text()
    assert "Mean and std over seeds, grouped by strategy" in markdown
    scratch = [float(r["test/acc"]) for r in rows if r["strategy"] == "scratch"]
    group_line = next(line for line in markdown.splitlines() if line.startswith("| scratch | 2 |"))
    assert f"{sum(scratch) / 2:.4g}" in group_line, "the grouped row holds the mean over the seeds"
    assert_png(sweep / "summary.png")
    assert_png(sweep / "curves.png")
    assert "summary.md" in proc.stdout and "scratch" in proc.stdout, "a short table is printed"


def test_one_failed_job_does_not_stop_the_others_and_is_listed(tmp_path):
    sweep = tmp_path / "sweep"
    bogus = tmp_path / "bogus.pt"  # exists, so the pre-check passes it; not a checkpoint: the job fails
    bogus.write_bytes(b"not a checkpoint")
    proc = run_cli("-m", "strategy=finetune", f"strategy.source=random,{bogus}", "train.epochs=1,2", *TINY[1:],
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, "a sweep with a failed job exits non-zero"
    rows = {r["job"]: r for r in summary_rows(sweep)}
    assert {j: r["status"] for j, r in rows.items()} == {
        "0": "completed", "1": "completed", "2": "failed", "3": "failed"}, "jobs after the failure ran"
    assert "bogus.pt" in rows["2"]["error"]
    assert "2 of 4 jobs did not complete" in proc.stdout
    assert "failed:" in proc.stdout and "bogus.pt" in proc.stdout


@pytest.mark.parametrize("launcher", ["basic", "joblib", "slurm"])
def test_a_sweep_with_a_failing_combination_is_refused_before_any_job_is_launched(launcher, tmp_path):
    """The README's SLURM sweep without strategy.source: every combination is validated first,
    the failing ones are listed, nothing is submitted or written (no sweep directory)."""
    chosen = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    proc = run_cli("-m", *chosen, "strategy=layerwise,grow,finetune", "seed=0,1,2", *TINY,
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    error = proc.stderr.strip()
    assert error.startswith("Error: The sweep was not started: 3 of 9 combinations would fail.")
    assert "#6 strategy=finetune seed=0, #7 strategy=finetune seed=1, #8 strategy=finetune seed=2: " \
           "strategy=finetune needs strategy.source=" in error
    assert "\n" not in error and "Traceback" not in proc.stdout + proc.stderr, "one paragraph"
    assert list(tmp_path.iterdir()) == [], "nothing was written"


def test_the_sweep_check_covers_an_experiments_own_sweep(tmp_path):
    """hydra.sweeper.params of an experiment are expanded as Hydra's basic sweeper does."""
    proc = run_cli("-m", "experiment=grow_vs_scratch", "train.batch_size=0", cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "9 of 9 combinations would fail" in proc.stderr, proc.stderr[-2000:]
    assert "#0 arm=scratch seed=0" in proc.stderr and "train.batch_size=0 is out of range" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_of_hundreds_of_combinations_is_checked_in_seconds():
    from stagetrain.app.overrides import check_command_line
    from stagetrain.core.errors import StagetrainError

    start = time.perf_counter()
    check_command_line(["-m", "strategy=layerwise,grow,scratch", "seed=range(0,100)", "dry_run=true"])
    ok = time.perf_counter() - start  # 300 jobs: about 2 s on a busy 2-core machine
    with pytest.raises(StagetrainError, match=r"100 of 300 combinations would fail\. #200 strategy=finetune "
                       r"seed=0, .* and 94 more: strategy=finetune needs"):
        check_command_line(["-m", "strategy=layerwise,grow,finetune", "seed=range(0,100)"])
    assert ok < 30, f"checking 300 combinations took {ok:.1f} s"


def _sweep_args(sweep: Path) -> list[str]:
    # job 0 is short and completes; job 1 is long enough to be stopped in the middle
    return ["-m", "strategy=scratch", "train.epochs=2,30", *TINY[1:], f"hydra.sweep.dir={sweep}"]


@pytest.mark.full  # a kill/resume or concurrency campaign: `pytest --full`
def test_sweep_resume_skips_completed_jobs_and_continues_the_interrupted_one(tmp_path):
    sweep = tmp_path / "sweep"
    exe = Path(sys.executable).parent / "stagetrain"
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen([str(exe), *_sweep_args(sweep)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)})
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            second = sweep / "1" / "metrics.jsonl"
            if second.exists() and sum("split" in e for e in read_metrics(second)) >= 2:
                proc.send_signal(signal.SIGTERM)  # the whole sweep is stopped, mid job 1
                break
            time.sleep(0.02)
        assert proc.wait(timeout=60) == 3, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((sweep / "0" / "run.json").read_text())["status"] == "completed"
    assert json.loads((sweep / "1" / "run.json").read_text())["status"] == "stopped"
    done = sweep / "0"
    before = {p: p.stat().st_mtime_ns for p in [done / "run.json", done / "metrics.jsonl",
                                                 *(done / "checkpoints").iterdir(), *(done / ".hydra").iterdir()]}

    again = run_cli(*_sweep_args(sweep), "resume=auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before, "the completed job was not touched"
    assert "already completed" in again.stdout + again.stderr
    assert json.loads((sweep / "1" / "run.json").read_text())["status"] == "completed"
    assert_epochs_exactly_once(sweep / "1")
    assert [r["status"] for r in summary_rows(sweep)] == ["completed", "completed"]


def test_tensorboard_event_files_mirror_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("strategy=grow", "strategy.epochs_per_stage=1", "train.epochs=1", "plots=false",
                   "logger.tensorboard=true")
    info = train(cfg, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    val = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("split") == "val"]
    curve = events.Scalars("val/acc")
    assert [(s.step, round(s.value, 5)) for s in curve] == [(e["step"], round(e["acc"], 5)) for e in val]
    assert len(events.Scalars("stage3/val/acc")) == 1, "each stage has its own curve"
    assert len(events.Scalars("growth/params")) == 2, "both growth events"
    assert events.Scalars("final/test/acc")[0].value == pytest.approx(info["final"]["test/acc"], abs=1e-6)
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "run" / "tensorboard").rglob("*"))


def test_tensorboard_is_off_by_default(tmp_path):
    train(make_cfg("strategy=scratch", *TINY), tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()


# ---------------------------------------------------------------- shipped experiments
def _sweep_size(name: str) -> int:
    params = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, size = OverridesParser.create(), 1
    for key, values in params.items():
        override = parser.parse_override(f"{key}={values}")
        size *= len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
    return size


def test_experiments_are_documented_sweeps():
    assert {"layerwise_vs_scratch", "grow_vs_scratch", "transfer_digits", "transfer_mnist_fashion"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        text = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
        assert "# Question:" in text and f"stagetrain -m experiment={name}" in text, name
        assert _sweep_size(name) >= 2, name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_job_composes_and_plans(name, tmp_path):
    env = {"STAGETRAIN_DATA": str(tiny_fortunes(tmp_path / "data"))} if name in TEXT_EXPERIMENTS else None
    proc = run_cli("-m", f"experiment={name}", "dry_run=true", f"hydra.sweep.dir={tmp_path / 'dry'}", cwd=tmp_path,
                   env=env, timeout=max(300, 5 * _sweep_size(name)))  # bert_pretrain_finetune: 108 jobs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Dry run: nothing was trained") == _sweep_size(name)
    assert "ERROR" not in proc.stderr


# One job of each experiment with its budget cut to a minimum: a real run (MNIST: small IDX files).
# A command-line value of a swept key replaces the experiment's list (one job).
SMALL = {
    "strategies_digits": ["arm=layerwise_autoencoder", "seed=0", "strategy.epochs_per_layer=1"],
    "layerwise_vs_scratch": ["arm=layerwise_rbm", "dataset.labeled_fraction=0.1", "seed=0", "strategy.epochs_per_layer=1"],
    "grow_vs_scratch": ["arm=grow_net2net", "seed=0", "strategy.epochs_per_stage=1"],
    "transfer_digits": ["strategy.mode=bitfit", "strategy.pretrain.enabled=true",
                        "strategy.pretrain.epochs=1"],
    "transfer_mnist_fashion": ["strategy.mode=lp_ft", "strategy.pretrain.enabled=true", "seed=0",
                               "strategy.pretrain.epochs=1"],
    "keras_transfer": ["strategy.pretrain.enabled=true", "seed=0", "strategy.pretrain.epochs=1"],
    "net2net_cnn": ["strategy.op=net2net", "seed=0", "strategy.widths=[[8,8,8],[16,8,16]]", "strategy.epochs_per_stage=1",
                    "model.channels=[8,8]", "model.fc_widths=[8]"],
    "resnet_layerwise_fashion": ["arm=layerwise_dgl", "seed=0", "strategy.epochs_per_layer=1", "strategy.finetune.epochs=1",
                                 "model.stage_channels=[8,8]"],
    "lm_grow_vs_scratch": ["arm=grow_stack", "seed=0", "strategy.epochs_per_stage=1", "strategy.final_epochs=1",
                           "model.d_model=16", "dataset.max_len=16", "dataset.val_fraction=0.1",
                           "dataset.test_fraction=0.1"],
    "text_pretrain_finetune": ["arm=text_mlm", "strategy.mode=lp_ft", "seed=0",
                               "dataset.labeled_fraction=0.1", "strategy.pretrain.epochs=1"],
    "text_layerwise_vs_scratch": ["seed=0", "strategy.epochs_per_layer=1",
                                  "compare.scratch=false"],
    "gstack_llama": ["arm=grow_stack", "seed=0", "strategy.epochs_per_stage=1", "strategy.final_epochs=1",
                     "model.config.hidden_size=16", "dataset.max_len=16", "dataset.val_fraction=0.1",
                     "dataset.test_fraction=0.1"],
    "bert_pretrain_finetune": ["arm=text_mlm_bpe", "strategy.mode=lora", "seed=0", "dataset.labeled_fraction=0.1",
                               "strategy.pretrain.epochs=1"],
}
LM_EXPERIMENTS = {"lm_grow_vs_scratch", "gstack_llama"}  # language models report val/test loss, not accuracy
TEXT_EXPERIMENTS = {"lm_grow_vs_scratch", "text_pretrain_finetune", "text_layerwise_vs_scratch",  # on fortunes
                    "gstack_llama", "bert_pretrain_finetune"}


def tiny_fortunes(root: Path) -> Path:
    """A dataset root whose text/fortunes/ holds two small category files (art and zippy, which it is recognised by)."""
    folder = root / "text" / "fortunes"
    folder.mkdir(parents=True)
    for name, line in (("art", "You will have a pleasant surprise."), ("zippy", "Are we having fun yet?")):
        (folder / name).write_text("".join(f"{line} Number {i}.\n%\n" for i in range(60)), encoding="utf-8")
    return root


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_one_tiny_job(name, tmp_path, idx_root):
    sweep = tmp_path / "sweep"  # MNIST / Fashion-MNIST: the small IDX files of conftest; text: a tiny fortunes
    lm = name in LM_EXPERIMENTS
    root = tiny_fortunes(tmp_path / "data") if name in TEXT_EXPERIMENTS else idx_root
    proc = run_cli("-m", f"experiment={name}", *SMALL[name], "train.epochs=1", "dataset.max_train=400",
                   "progress=off", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"STAGETRAIN_DATA": str(root)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = summary_rows(sweep)
    jobs = [r for r in rows if not r["job"].endswith("/control")]
    assert len(jobs) == 1 and all(r["status"] == "completed" for r in rows)
    assert float(jobs[0]["test/loss" if lm else "test/acc"]) > 0
    controlled = "compare.scratch=false" not in SMALL[name] and "scratch: true" in (
        REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert [r["job"] for r in rows if r not in jobs] == (["0/control"] if controlled else [])  # its equal-FLOPs control


def test_a_sweep_over_an_earlier_sweeps_runs_needs_resume_and_touches_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "strategy=scratch", *TINY, f"hydra.sweep.dir={sweep}"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    files = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    again = run_cli(*args[:-2], "train.epochs=2", "plots=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 1 and "already holds the runs of an earlier sweep" in again.stderr
    assert "resume=auto" in again.stderr
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == files, "not a byte changed"


def test_a_dry_run_sweep_writes_nothing(tmp_path):
    proc = run_cli("-m", "strategy=scratch,grow", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Dry run: nothing was trained") == 2
    assert not (tmp_path / "outputs").exists(), [str(p) for p in tmp_path.rglob("*")]


def test_dry_run_plan_counts_in_run_pretraining_on_its_own_data():
    from stagetrain.datasets import dataset_meta
    from stagetrain.runs.config import validate
    from stagetrain.runs.dryrun import estimate_plan
    from stagetrain.runs.parts import initial_spec
    from stagetrain.strategies import STRATEGIES

    cfg = make_cfg("strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.dataset=mnist",
                   "dataset=fashion_mnist", "dataset.labeled_fraction=0.1", "model.widths=[32]")
    settings = validate(cfg)
    shape, classes, n_train, n_labeled = dataset_meta(settings.dataset)
    spec = initial_spec(settings, shape, classes)
    rows = estimate_plan(settings, STRATEGIES["finetune"].build(settings, spec), spec, n_train, n_labeled)
    pretrain, finetune = rows[0], rows[-1]
    assert pretrain["stage"].dataset == "source" and pretrain["samples"] == n_train, "all of MNIST"
    assert finetune["samples"] == n_labeled and n_labeled < n_train / 5, "10% of Fashion-MNIST"


def test_dry_run_estimate_of_a_full_batch_probe_bounds_what_it_spends(tmp_path):
    """An L-BFGS step makes many forward-backward passes (its line search); the dry run counts
    the most one step may make, so its estimate bounds the run's measured FLOPs from above."""
    from stagetrain.datasets import dataset_meta
    from stagetrain.runs.config import validate
    from stagetrain.runs.dryrun import estimate_plan
    from stagetrain.runs.parts import initial_spec
    from stagetrain.runs.runner import train
    from stagetrain.strategies import STRATEGIES

    cfg = make_cfg("strategy=finetune", "strategy.source=random", "strategy.mode=linear_probe",
                   "dataset.classes=[5,6,7,8,9]", "plots=false")
    settings = validate(cfg)
    shape, classes, n_train, n_labeled = dataset_meta(settings.dataset)
    spec = initial_spec(settings, shape, classes)
    [row] = estimate_plan(settings, STRATEGIES["finetune"].build(settings, spec), spec, n_train, n_labeled)
    spent = train(cfg, tmp_path / "probe")["flops"]
    assert spent <= row["flops"] <= 5 * spent  # counting one pass per step said 1/60 of it


def test_tensorboard_logs_the_lr_used_every_n_steps_and_greedy_heads_apart(tmp_path):
    """logger.every_steps: train/lr is the LR the optimizer used (falling over a cosine stage,
    never the 0.0 the scheduler holds after the stage's last step) and train_steps/loss is
    written every N steps; a greedy stage's auxiliary-head metrics have their own tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("strategy=layerwise", "strategy.epochs_per_layer=1", "train.epochs=1", "plots=false",
                   "logger.tensorboard=true", "logger.every_steps=5")
    train(cfg, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    lr = [(s.step, s.value) for s in events.Scalars("train/lr")]
    assert [s for s, _ in lr][:3] == [5, 10, 15] and all(v > 0 for _, v in lr), lr
    assert lr[0][1] > lr[1][1] > lr[2][1], "a cosine stage: the LR used falls step by step"
    assert [s.step for s in events.Scalars("train_steps/loss")][:3] == [5, 10, 15]
    greedy = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if e.get("split") == "val" and e["stage_name"].startswith("greedy")]
    assert greedy and len(events.Scalars(f"aux/{greedy[0]['stage_name']}/val/acc")) == 1
    final_stage = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl")
                   if e.get("split") == "val" and not e["stage_name"].startswith("greedy")]
    assert [s.step for s in events.Scalars("val/acc")] == [e["step"] for e in final_stage], (
        "val/acc is the final model's only")


def test_report_groups_by_a_key_only_some_runs_have(tmp_path):
    """README's `--group-by strategy,strategy.objective`: scratch runs lack strategy.objective;
    it is a column all the same, blank for them (it was refused as 'not a column')."""
    sweep = tmp_path / "arms"
    proc = run_cli("-m", "arm=scratch,layerwise_supervised", "seed=0,1", *TINY, "dataset.max_train=100",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exe = Path(sys.executable).parent / "stagetrain-report"
    out = tmp_path / "arms.csv"
    report = subprocess.run([str(exe), str(sweep), "--group-by", "strategy,strategy.objective", "--level", "0.9",
                             "--csv", str(out)], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    groups = {(r["strategy"], r["strategy.objective"]): r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert set(groups) == {("scratch", ""), ("layerwise", "supervised")}, groups

"""The CLI behaves as Hydra users expect, installed non-editable, from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, run_cli, run_dirs

import stagetrain.app.cli


def test_cfg_job_works_from_any_directory_after_a_non_editable_install(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(REPO)], check=True, capture_output=True)
    assert (site / "stagetrain" / "conf" / "config.yaml").exists(), "conf/ not shipped in the wheel"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", "from stagetrain.app.cli import main; main()",
                           "--cfg", "job", "strategy=scratch", "model=cnn"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "name: scratch" in proc.stdout and "channels:" in proc.stdout
    out = subprocess.run([sys.executable, "-c", "import stagetrain; print(stagetrain.__file__)"],
                         cwd=workdir, env=env, capture_output=True, text=True).stdout
    assert str(site) in out, "the installed copy, not the repository's, must be used"


def test_info_lists_the_config_groups(tmp_path):
    proc = run_cli("--info", "defaults", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "strategy/layerwise" in proc.stdout and "dataset/digits" in proc.stdout


def test_config_dir_adds_user_config_groups(tmp_path):
    extra = tmp_path / "myconf" / "model"
    extra.mkdir(parents=True)
    (extra / "tiny.yaml").write_text("defaults:\n  - /schema/model/mlp@_here_\n  - _self_\nname: mlp\nwidths: [7]\n")
    proc = run_cli("--config-dir", str(tmp_path / "myconf"), "model=tiny", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "- 7" in proc.stdout


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    proc = run_cli("strategy=layerwise", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in ("greedy-block1", "greedy-block3", "finetune", "est. FLOPs", "Dry run"):
        assert text in proc.stdout
    assert not any(tmp_path.rglob("*")), "a dry run must not create a run directory"


def test_multirun_sweep_makes_one_run_dir_per_job(tmp_path):
    proc = run_cli("-m", "strategy=scratch", "seed=0,1", "train.epochs=1", "progress=off",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dirs = run_dirs(tmp_path / "sweep")
    assert len(dirs) == 2
    seeds = sorted(json.loads((d / "run.json").read_text())["seed"] for d in dirs)
    assert seeds == [0, 1]


def test_scratch_run_prints_final_table_and_run_dir(tmp_path):
    proc = run_cli("strategy=scratch", "train.epochs=2", "progress=plain", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    assert f"run directory: {run.resolve()}" in proc.stdout.replace("\n", "")
    assert "test/acc=" in proc.stdout
    assert "epoch 1/2" in proc.stdout  # plain progress lines when stdout is not a terminal


def test_two_runs_in_the_same_second_get_distinct_directories(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    procs = [subprocess.Popen([exe, "strategy=scratch", "train.epochs=1", "progress=off"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert len(run_dirs(tmp_path)) == 3


def test_existing_run_dir_needs_resume(tmp_path):
    run = tmp_path / "run"
    assert run_cli("strategy=scratch", "train.epochs=1", "progress=off", f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    proc = run_cli("strategy=scratch", "train.epochs=1", "progress=off", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode != 0 and "resume=auto" in proc.stdout + proc.stderr
    again = run_cli("strategy=scratch", "train.epochs=1", "progress=off", f"hydra.run.dir={run}", "resume=auto", cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout + again.stderr


def test_rich_progress_and_bf16_autocast_run_to_completion(tmp_path):
    proc = run_cli("strategy=scratch", "train.epochs=2", "progress=rich", "device.precision=bf16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test/acc=" in proc.stdout
    (run,) = run_dirs(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["config"]["device"]["precision"] == "bf16"


def test_help_is_stagetrains_page_without_internal_groups(capsys):
    stagetrain.app.cli.main(["--help"])
    out = capsys.readouterr().out
    for text in ("staged neural-network training", "examples:", "outputs:", "--hydra-help", "--version"):
        assert text in out, text
    for group, options in {"strategy": ["scratch", "layerwise", "grow", "finetune"], "dataset": ["digits", "mnist"],
                           "model": ["mlp", "cnn"], "device": ["auto", "cpu"], "experiment": ["strategies_digits"],
                           "arm": ["grow_random"], "hydra/launcher": ["slurm"]}.items():
        assert f"\n  {group}: " in out, group
        for option in options:
            line = next((ln for ln in out.splitlines() if ln.startswith(f"    {option} ")), "")
            assert len(line.split()) > 2, f"{group}/{option} has no one-line description"
    assert "schema" not in out, "Hydra's internal schema/* groups are hidden"
    assert out.count("\n  stagetrain") == 5, "five examples"
    assert max(len(line) for line in out.splitlines()) <= 100


def test_help_and_version_do_not_import_torch_and_hydra_help_stays():
    code = ("import sys; from stagetrain.app.cli import main; main([sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    for flag in ("--help", "--version"):
        proc = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    import hydra
    import torch

    assert f"torch {torch.__version__.split('+')[0]}" in proc.stdout and f"hydra-core {hydra.__version__}" in proc.stdout
    import torchvision

    assert f"torchvision {torchvision.__version__.split('+')[0]}" in proc.stdout
    assert proc.stdout.startswith("stagetrain ")
    hydra_help = run_cli("--hydra-help", cwd=REPO)
    assert hydra_help.returncode == 0 and "Hydra (" in hydra_help.stdout and "--multirun" in hydra_help.stdout


def test_a_terminal_shows_the_progress_display_and_the_table_and_the_log_gets_the_epochs(tmp_path):
    import pty

    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([exe, "strategy=scratch", "train.epochs=3", "plots=false", "model.widths=[16]",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=secondary, stderr=secondary, env={**os.environ, "COLUMNS": "120"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    os.close(primary)
    screen = b"".join(chunks).decode(errors="replace")
    assert "run directory:" in screen and "final:" in screen and "stagetrain: scratch - completed" in screen
    assert "epoch 1/3:" not in screen and "epoch 3/3:" not in screen, "per-epoch lines stay off the terminal"
    assert "epoch 1/3" in screen, "the progress display"
    log = (tmp_path / "run" / "stagetrain.log").read_text()
    assert all(f"stage 1 train epoch {e}/3: " in log for e in (1, 2, 3)), log


def test_ctrl_c_in_a_sweep_prints_the_sweep_command_that_continues_it(tmp_path):
    """Not one job's resume=auto hydra.run.dir=...: the whole -m command, in the same sweep
    directory, with resume=auto (README "Comparing strategies": completed jobs are skipped)."""
    import signal
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    args = ["-m", "strategy=scratch", "train.epochs=2,500", "progress=off", "plots=false", "model.widths=[16]"]
    proc = subprocess.Popen([exe, *args, "hydra.sweep.dir=sw"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "sw" / "1" / "metrics.jsonl").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    expected = ("stagetrain -m strategy=scratch train.epochs=2,500 progress=off plots=false 'model.widths=[16]' "
                "hydra.sweep.dir=sw resume=auto")
    assert "continue the sweep" in out and expected in out, out[-3000:]
    assert "hydra.run.dir=" not in out

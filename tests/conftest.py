"""Shared fixtures: configs composed through Hydra's compose API, CLI runs in subprocesses,
small MNIST-format IDX files, and the switches of the two test commands.

``pytest`` (the README's test command) runs everything that needs nothing beside the
repository: MNIST / Fashion-MNIST code paths read small IDX files written here. Tests marked
``full`` (the real MNIST files, a SLURM cluster, root, the kill -9 campaigns) run with
``pytest --full`` (or ``-m full``) and skip, saying how to enable them, when what they need
is missing. ``.ci/run`` runs both and fails on any skip but the CUDA tests'.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from torch.optim.optimizer import register_optimizer_step_pre_hook

import stagetrain.app.cli  # noqa: F401  (registers the resolvers and schemas)
from stagetrain.runs.rundir import read_metrics

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", REPO.parent / "shared" / "data"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # n workers x 1 intra-op thread on n cores: with torch's default (one thread per core) in
    # every worker, a training step of these small models is up to 10x slower on a busy machine.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the CLI subprocesses too
FAST = ["progress=off"]


def make_cfg(*overrides: str):
    """The composed run config for ``overrides``, exactly as the CLI would build it."""
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``stagetrain`` console script (this interpreter's) in ``cwd``."""
    exe = Path(sys.executable).parent / "stagetrain"
    full_env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT), **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding run.json) under ``root``."""
    return sorted(p.parent for p in Path(root).rglob("run.json"))


REAL_DATA_HINT = ("put the real MNIST and Fashion-MNIST IDX files in ../shared/data/MNIST/raw and "
                  "../shared/data/FashionMNIST/raw beside the repository, or set STAGETRAIN_DATA to the "
                  "folder holding MNIST/ and FashionMNIST/")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked full (real MNIST data, SLURM, root, kill -9 campaigns)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --full (or a -m expression naming ``full``) the ``full`` tests are deselected."""
    if config.getoption("--full") or "full" in (config.getoption("-m") or ""):
        return
    keep = [i for i in items if i.get_closest_marker("full") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("full") is not None])
        items[:] = keep


def has_real_data(root: Path = DATA_ROOT) -> bool:
    return all((root / name / "raw" / "train-images-idx3-ubyte").exists() for name in ("MNIST", "FashionMNIST"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST / Fashion-MNIST files; the test skips, saying how to get them, without."""
    if not has_real_data():
        pytest.skip(f"needs the real MNIST files, not found under {DATA_ROOT}: {REAL_DATA_HINT}")
    return DATA_ROOT


def write_idx(path: Path, array: torch.Tensor, compress: bool = False) -> None:
    """An IDX (SN3 "Pascal Vincent") file of uint8 values, as MNIST ships them: magic
    0x00000800 + ndim, then each dimension as a big-endian int32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.to(torch.uint8).contiguous().numpy().tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    path.write_bytes(data)


def make_idx_images(n: int, dataset_seed: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` learnable 28x28 uint8 images: a smooth random prototype per class (one set per
    dataset, shared by its splits) plus noise (per split)."""
    g = torch.Generator().manual_seed(dataset_seed)
    protos = torch.nn.functional.avg_pool2d(torch.rand(10, 1, 28, 28, generator=g), 5, stride=1, padding=2)
    protos = (protos - protos.amin()) / (protos.amax() - protos.amin())
    g.manual_seed(1000 + split_seed)
    y = torch.arange(n) % 10
    x = (protos[y, 0] * 200 + 40 * torch.rand(n, 28, 28, generator=g)).clamp(0, 255)
    return x.to(torch.uint8), y.to(torch.uint8)


IDX_SIZES = {"train": 1200, "t10k": 300}  # a small MNIST: train / test images per dataset


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root with small MNIST and Fashion-MNIST in torchvision's layout
    (``<root>/MNIST/raw/train-images-idx3-ubyte`` ...), each IDX file also gzipped beside
    it as the official downloads are; read by the same torchvision code as the real files."""
    root = tmp_path_factory.mktemp("idx")
    for seed, name in enumerate(("MNIST", "FashionMNIST")):
        raw = root / name / "raw"
        raw.mkdir(parents=True)
        for split_seed, (split, n) in enumerate(IDX_SIZES.items()):
            x, y = make_idx_images(n, seed, split_seed)
            write_idx(raw / f"{split}-images-idx3-ubyte", x, compress=True)
            write_idx(raw / f"{split}-labels-idx1-ubyte", y, compress=True)
    return root


# ---------------------------------------------------------------- kill / resume harness
def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def kill_when(run: Path, args: list[str], cwd: Path, ready) -> None:
    """Start the CLI, SIGKILL it once ``ready(events)`` is true for metrics.jsonl (a moment
    later: inside the next epoch, well before the run can end)."""
    metrics = run / "metrics.jsonl"
    kill_once(run, args, cwd, lambda: metrics.exists() and ready(read_metrics(metrics)), settle=0.05)


def kill_once(run: Path, args: list[str], cwd: Path, fired: Callable[[], bool], settle: float = 0.0) -> None:
    """Start the CLI in ``run``; SIGKILL it once ``fired()`` is true; fail if it ended first."""
    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    proc = subprocess.Popen([exe, *args, f"hydra.run.dir={run}"], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)})
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if fired():
                time.sleep(settle)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def kill_mid_epoch(run: Path, args: list[str], cwd: Path) -> None:
    """Start the CLI; SIGKILL it once a mid-epoch checkpoint after epoch 1 exists."""
    last = run / "checkpoints" / "last.pt"

    def mid_epoch() -> bool:
        try:
            pos = torch.load(last, weights_only=True)["position"] if last.exists() else None
        except Exception:  # noqa: BLE001 - being replaced right now
            pos = None
        return pos is not None and pos["epoch"] >= 1 and pos["batch"] > 0

    kill_once(run, args, cwd, mid_epoch)


def assert_epochs_exactly_once(run: Path) -> None:
    events = read_metrics(run / "metrics.jsonl")
    keys = Counter((e["stage"], e["epoch"], e["split"]) for e in events if "split" in e)
    assert all(n == 1 for n in keys.values()), f"duplicated epoch lines: {keys}"
    info = json.loads((run / "run.json").read_text())
    for s in info["stages"]:
        for split in ("train", "val"):
            got = sorted(e for (st, e, sp) in keys if st == s["stage"] and sp == split)
            assert got == list(range(1, s["epochs"] + 1)), f"missing epochs in stage {s['stage']}"


def copy_rewound_to_stage_1(run: Path, copy: Path) -> Path:
    """A copy of a finished run as if stopped at the end of its first stage: only the stage-1
    checkpoints kept, run.json "stopped" (resume=auto then continues from stage 1's end)."""
    import shutil

    shutil.copytree(run, copy)
    for p in copy.glob("checkpoints/*.pt"):
        if not p.name.startswith("stage-1-"):
            p.unlink()
    meta = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**meta, "status": "stopped"}))
    return copy


def assert_resumes_bit_identical_from_stage_1(args: list[str], tmp_path: Path) -> None:
    """Train ``args`` to the end; resume a copy rewound to the end of stage 1 with
    resume=auto: the same final weights, bit for bit, and every epoch logged once."""
    from stagetrain.runs.runner import train

    run = tmp_path / "ref"
    assert train(make_cfg(*args), run)["status"] == "completed"
    resumed = copy_rewound_to_stage_1(run, tmp_path / "resumed")
    assert train(make_cfg(*args, "resume=auto"), resumed)["status"] == "completed"
    ref, got = final_weights(run), final_weights(resumed)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(resumed)


def resume_until_done(run: Path, args: list[str], cwd: Path) -> None:
    proc = run_cli(*args, f"hydra.run.dir={run}", "resume=auto", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------- looking inside a running engine
def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters AND buffers (BN running_mean, running_var, num_batches_tracked), cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

def assert_bit_identical(before: dict[str, torch.Tensor], module: torch.nn.Module, what: str) -> None:
    now = module.state_dict()
    assert now.keys() == before.keys(), what
    changed = [k for k in before if not torch.equal(before[k], now[k])]
    assert not changed, f"{what}: {changed} changed"

@contextmanager
def after_each_backward(fn: Callable[[torch.optim.Optimizer], None]) -> Iterator[None]:
    """Call ``fn(optimizer)`` after every backward, just before the optimizer steps."""
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: fn(opt))
    try:
        yield
    finally:
        handle.remove()

def optimizer_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


@pytest.fixture
def built_steps(monkeypatch) -> list:
    """The training steps ``engine.runtime.build_step`` returns, in order (one per stage);
    the engine runs unchanged, this only records what it built."""
    from stagetrain.engine import runtime

    built: list = []
    original = runtime.build_step

    def record(*args):
        step = original(*args)
        built.append(step)
        return step

    monkeypatch.setattr(runtime, "build_step", record)
    return built


def engine_for(cfg):
    """The engine a run of ``cfg`` would train (validated; plan, model and data built), on the CPU."""
    from stagetrain.families import vouched_by
    from stagetrain.progress import Reporter
    from stagetrain.runs.parts import build_engine

    with vouched_by(cfg):  # as runner.train: the test's config is the user's
        return build_engine(cfg, torch.device("cpu"), None, Reporter("off"))[0]


@pytest.fixture
def one_rank():
    """A one-process gloo group in this process: what writing a sharded checkpoint needs
    (tests/test_fsdp.py, tests/test_hostile_fsdp.py)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()

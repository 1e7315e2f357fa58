"""``train(cfg, run_dir)``: validate, build, run and record one run. Tests call this directly.

Order matters for the user contract: everything that can be checked without data is
checked before data is loaded, and nothing is written into the run directory before the
run starts (the CLI removes the directory Hydra made when nothing ran).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save as safetensors_bytes

from stagetrain import __version__, distributed
from stagetrain import checkpoint as ckpt
from stagetrain.checkpoint import atomic_write
from stagetrain.config import to_yaml, validate
from stagetrain.data import dataset_meta, load_data
from stagetrain.engine import Engine, freeze, prefix_len
from stagetrain.errors import StagetrainError, StopRequested
from stagetrain.flops import measure_step_flops
from stagetrain.growth import apply_op
from stagetrain.launch import continue_on_requeue, limit_job_threads, stop_signals
from stagetrain.models import StagedModel, build_spec, count_parameters
from stagetrain.objectives import build_helper
from stagetrain.plan import Plan
from stagetrain.progress import Reporter
from stagetrain.rundir import RunDir
from stagetrain.strategies import STRATEGIES

log = logging.getLogger("stagetrain")

# keys that may differ between an interrupted run and its resumption
RESUME_FREE_KEYS = {"resume", "progress", "dry_run", "plots"}


def pick_device(dcfg: DictConfig) -> torch.device:
    """The training device; under torchrun a CUDA run uses GPU ``LOCAL_RANK``.

    ``deterministic``: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its handle, so
    it is set here, before anything touches CUDA (data and model move to the device later).
    """
    if dcfg.deterministic:
        if torch.cuda.is_available() and torch.cuda.is_initialized() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            log.warning("device.deterministic=true: CUDA was already initialised in this process, so "
                        "CUBLAS_WORKSPACE_CONFIG may come too late; export CUBLAS_WORKSPACE_CONFIG=:4096:8.")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if dcfg.threads:
        torch.set_num_threads(int(dcfg.threads))
    limit_job_threads(dcfg.threads)  # a joblib / SLURM job: its share of the cores
    name = dcfg.name
    if distributed.active():
        mps = name == "mps" or (name == "auto" and not torch.cuda.is_available()
                                and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        if mps:
            raise StagetrainError("torchrun with Apple MPS is not supported (no MPS backend for torch.distributed). "
                                  "Use device=cpu (gloo) or CUDA GPUs (NCCL).")
        if name in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(distributed.local_rank())
            return torch.device("cuda", distributed.local_rank())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagetrainError("device=cuda was asked for, but PyTorch sees no CUDA GPU here. Use device=cpu or device=auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise StagetrainError("device.name=mps was asked for, but Apple MPS is not available here. Use device=cpu or device=auto.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def estimate_plan(cfg: DictConfig, plan: Plan, spec: dict[str, Any], n_train: int,
                  n_labeled: int) -> list[dict[str, Any]]:
    """Per stage: samples per epoch and estimated training FLOPs with and without caching."""
    model = StagedModel(spec)
    x = torch.randn(2, *spec["in_shape"])
    if plan.input_norm == "unit":
        x = x.sigmoid()
    y = torch.zeros(2, dtype=torch.long)
    rows = []
    g = torch.Generator().manual_seed(0)
    extra = getattr(STRATEGIES[cfg.strategy.name], "datasets", lambda c: {})(cfg)  # e.g. in-run pretraining
    sizes = {"target": (n_train, n_labeled), **{k: tuple(dataset_meta(v)[2:4]) for k, v in extra.items()}}
    for stage in plan.stages:
        for op in stage.ops:
            model, _ = apply_op(model, op, g)
        freeze(model, stage)
        helper = build_helper(stage.helper)
        p = prefix_len(model, stage)
        step, pre = measure_step_flops(stage, model, helper, x, y, p)
        n_all, n_lab = sizes.get(stage.dataset, sizes["target"])
        n = max(1, round((n_lab if stage.data == "labeled" else n_all) * stage.data_fraction))
        plain = (step + pre) * n * stage.epochs
        cached = pre * n + step * n * stage.epochs
        use_cache = p > 0 and stage.cache == "on" or (stage.cache == "auto" and p > 0 and stage.epochs >= 2)
        rows.append({"stage": stage, "samples": n, "params": count_parameters(model), "flops": cached if use_cache else plain,
                     "flops_no_cache": plain, "flops_cache": cached if p > 0 else None})
    return rows


def print_plan(cfg: DictConfig, plan: Plan, rows: list[dict[str, Any]], params: int) -> None:
    from rich.table import Table

    from stagetrain.progress import make_console

    table = Table(title=f"stagetrain plan: strategy={plan.strategy} ({params:,} parameters at the start)")
    for col in ("stage", "name", "objective", "trains", "data", "epochs", "est. FLOPs", "FLOPs no cache"):
        table.add_column(col)
    for k, row in enumerate(rows):
        s = row["stage"]
        table.add_row(str(k + 1), s.name, s.objective, ", ".join(s.trainable),
                      f"{s.data} ({row['samples']:,}/epoch)", str(s.epochs), f"{row['flops']:.3g}",
                      f"{row['flops_no_cache']:.3g}" if row["flops_cache"] is not None else "-")
    console = make_console()
    console.print(table)
    total = sum(r["flops"] for r in rows)
    console.print(f"Total estimated training FLOPs: {total:.3g}. Dry run: nothing was trained or written.")


def initial_spec(cfg: DictConfig, shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """The architecture the run starts from: the strategy's own, or the one ``model=`` gives."""
    strategy = STRATEGIES[cfg.strategy.name]
    if hasattr(strategy, "initial_spec"):
        return strategy.initial_spec(cfg, shape, classes)
    return build_spec(cfg.model, shape, classes)


def _versions() -> dict[str, str]:
    """Package versions for run.json, read from the installed metadata (importing
    torchvision or scikit-learn just for this would cost seconds per run)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"stagetrain": __version__, "torch": torch.__version__, "torchvision": installed("torchvision"),
            "hydra": installed("hydra-core"), "sklearn": installed("scikit-learn"),
            "python": platform.python_version()}


def _config_for_resume(cfg: DictConfig, rundir: RunDir) -> DictConfig:
    """The interrupted run's own config; the command line may only change RESUME_FREE_KEYS."""
    saved = OmegaConf.create(rundir.read_run_json()["config"])
    current = OmegaConf.to_container(cfg, resolve=True)
    changed = sorted(k for k in _diff_keys(current, OmegaConf.to_container(saved)) if k.split(".")[0] not in RESUME_FREE_KEYS)
    if changed and cfg.resume == "auto":  # the same command line again: differences are news
        log.warning("Resuming %s with its saved config; ignoring the differing values of: %s",
                    rundir.path, ", ".join(changed))
    else:
        log.info("Resuming %s with its saved config.", rundir.path)
    for key in RESUME_FREE_KEYS:
        saved[key] = cfg[key]
    return saved


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _load_resume_checkpoint(rundir: RunDir) -> dict[str, Any] | None:
    """Newest readable checkpoint; a bad one is reported and the previous good one used."""
    for path in rundir.resume_candidates():
        try:
            state = ckpt.load(path)
        except StagetrainError as e:
            log.warning("%s Falling back to the previous checkpoint.", e)
            continue
        log.info("Resuming from %s (stage %d, epoch %d, batch %d)", path, state["position"]["stage"] + 1,
                 state["position"]["epoch"], state["position"]["batch"])
        return state
    if rundir.resume_candidates():
        log.warning("No checkpoint in %s could be read (see above); the run starts again from the "
                    "beginning in the same directory.", rundir.checkpoints)
    else:
        log.info("%s holds no checkpoint yet; the run starts from the beginning.", rundir.path)
    return None


def build_engine(cfg: DictConfig, device: torch.device, rundir: RunDir | None, reporter: Reporter,
                 resumed: dict[str, Any] | None = None) -> Engine:
    """Data, model (from the strategy's initial architecture and weights), plan and engine.

    ``engine.source`` holds what the strategy's ``init_model`` reported (finetune's source).
    """
    data = load_data(cfg.dataset, cfg.seed).to(device)
    spec = initial_spec(cfg, data.in_shape, data.num_classes)
    seed_everything(cfg.seed)
    model = StagedModel(spec).to(device)
    strategy = STRATEGIES[cfg.strategy.name]
    plan = strategy.build(cfg, spec)
    source = None
    if resumed is None and hasattr(strategy, "init_model"):
        source = strategy.init_model(cfg, model)
    engine = Engine(cfg, plan, data, model, device, rundir, reporter, to_yaml(cfg))
    engine.source = source
    if hasattr(strategy, "datasets"):
        for name, dataset_cfg in strategy.datasets(cfg).items():
            engine.datasets[name] = load_data(dataset_cfg, cfg.seed).to(device)
    if resumed is not None:
        engine.restore(resumed)
    return engine


def _write_plots(rundir: RunDir) -> None:
    """Learning-curve PNGs at the end of a run, also a failed one; a plot never fails a run."""
    try:
        from stagetrain.plots import plot_run

        plot_run(rundir.path)
    except Exception as e:  # noqa: BLE001 - plotting is a convenience
        log.warning("Could not draw the plots for %s: %s", rundir.path, e)


def train(cfg: DictConfig, run_dir: str | Path | None) -> dict[str, Any]:
    """Run one configured job; returns run.json's content (or the plan rows for a dry run)."""
    validate(cfg)
    if cfg.dry_run:
        shape, classes, n_train, n_labeled = dataset_meta(cfg.dataset)
        spec = initial_spec(cfg, shape, classes)
        plan = STRATEGIES[cfg.strategy.name].build(cfg, spec)
        rows = estimate_plan(cfg, plan, spec, n_train, n_labeled)
        if distributed.is_main():
            print_plan(cfg, plan, rows, count_parameters(StagedModel(spec)))
        return {"dry_run": True, "plan": plan.to_dict(), "estimates": [
            {k: v for k, v in r.items() if k != "stage"} for r in rows]}

    world = distributed.world_size() if distributed.init() else 1
    main = distributed.is_main()  # only rank 0 writes the run directory
    if world > 1:
        _check_world(cfg, world)
        if not main:  # rank 0's log speaks for the run; other ranks add warnings and errors
            log.setLevel(logging.WARNING)
    rundir = RunDir(Path(run_dir))
    resumed: dict[str, Any] | None = None
    if rundir.has_run():
        if cfg.resume == "never":
            raise StagetrainError(
                f"The run directory {rundir.path} already holds a run. Add resume=auto to continue it, "
                "or leave hydra.run.dir at its default to start a new run directory.")
        info = rundir.read_run_json()
        if info.get("status") == "completed":
            log.info("Run %s already completed; nothing to do (resume=%s).", rundir.path, cfg.resume)
            return info
        if info.get("status") == "failed" and not rundir.resume_candidates():
            log.info("%s failed before its first checkpoint; starting it again.", rundir.path)
        else:
            cfg = _config_for_resume(cfg, rundir)
            validate(cfg)
            resumed = _load_resume_checkpoint(rundir)
        if main:
            (rundir.path / ".hydra").mkdir(exist_ok=True)
            (rundir.path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    elif cfg.resume not in ("never", "auto"):
        raise StagetrainError(f"resume={cfg.resume}: that directory holds no stagetrain run (no run.json).")

    device = pick_device(cfg.device)
    previous_info = rundir.read_run_json() if rundir.has_run() else {}
    reporter = Reporter(cfg.progress if main else "off")
    engine = build_engine(cfg, device, rundir if main else None, reporter, resumed)
    distributed.barrier()  # every rank has read the run directory before rank 0 writes to it
    if main:
        rundir.checkpoints.mkdir(parents=True, exist_ok=True)
        ckpt.preflight_disk(rundir.checkpoints, count_parameters(engine.model), cfg.optim, len(engine.plan.stages))
    plan = engine.plan
    source = previous_info.get("source") if resumed is not None else engine.source

    started = time.time()
    info = {
        "status": "running", "strategy": plan.strategy, "run_dir": str(rundir.path.resolve()),
        "seed": cfg.seed, "device": str(device), "started": started, "plan": plan.to_dict(),
        "stages": [], "final": {}, "versions": _versions(),
        "config": OmegaConf.to_container(cfg, resolve=True), "error": None, "source": source,
    }
    info["started"] = previous_info.get("started", started)
    if world > 1:
        info["distributed"] = {"world_size": world, "backend": str(torch.distributed.get_backend()),
                               "batch_per_rank": cfg.train.batch_size // world}

    def update(eng: Engine, **extra: Any) -> None:
        st = eng.state
        info.update({"stages": st.summaries, "flops": st.flops, "seconds": round(st.seconds, 3),
                     "global_step": st.global_step, "updated": time.time(),
                     "params": count_parameters(eng.model), **extra})
        if main:
            rundir.write_run_json(info)

    engine.on_update = update
    if cfg.logger.tensorboard and main:
        from stagetrain.tensorboard import TensorBoardSink

        engine.sinks.append(TensorBoardSink(rundir.path, info["config"]))
    update(engine)
    stop_flag: dict[str, Any] = {}
    engine.stop_flag = stop_flag
    continue_on_requeue()  # under submitit: a requeued job continues this run (resume=auto)
    previous = {sig: signal.signal(sig, lambda s, f: stop_flag.__setitem__("signal", signal.Signals(s).name))
                for sig in stop_signals()}
    stopped = False
    try:
        final = engine.run()
    except StopRequested as e:
        stopped = True
        update(engine, status="stopped", stop_reason="signal",
               error=f"stopped by {e}; continue with resume=auto (hydra.run.dir={rundir.path})")
        raise
    except StagetrainError as e:
        update(engine, status="failed", error=str(e))
        raise
    except RuntimeError as e:
        if "does not have a deterministic implementation" not in str(e):
            update(engine, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        err = StagetrainError(
            f"device.deterministic=true, but this run needs an operation PyTorch cannot run "
            f"deterministically on {device.type.upper()} ({str(e).splitlines()[0][:120]}...). CNN auxiliary "
            "heads (adaptive pooling) and CNN decoders (upsampling) are such cases. Run it with "
            "device.deterministic=false.")
        update(engine, status="failed", error=str(err))
        raise err from None
    except BaseException as e:
        update(engine, status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        reporter.close()
        for sink in engine.sinks:
            sink.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if cfg.plots and main:
            _write_plots(rundir)
        if stopped:  # all ranks stopped at the same step: leave together, once rank 0 has written
            distributed.barrier()

    if main:
        state_dict = {k: v.detach().cpu().contiguous() for k, v in engine.model.state_dict().items()}
        atomic_write(rundir.safetensors, safetensors_bytes(
            state_dict, metadata={"format": "stagetrain", "arch": json.dumps(engine.model.spec),
                                  "strategy": plan.strategy}))
    last_reason = engine.state.summaries[-1]["stop_reason"] if engine.state.summaries else None
    update(engine, status="completed", final=final, stop_reason=engine.state.run_stop or last_reason)
    distributed.barrier()
    return info


def _check_world(cfg: DictConfig, world: int) -> None:
    """Under torchrun the global batch stays ``train.batch_size``: each rank takes 1/world of it."""
    bs = cfg.train.batch_size
    if bs % world:
        raise StagetrainError(
            f"train.batch_size={bs} cannot be split over the {world} torchrun processes: the global "
            f"batch stays train.batch_size and each process takes batch_size / {world}. Use a "
            f"multiple of {world}, e.g. train.batch_size={max(world, bs // world * world)}.")

"""``train(cfg, run_dir)``: one run, told as a story -- validate, start or resume, build,
run, record. Tests and the Python API call it directly.

Order matters for the user contract: everything that can be checked without data is
checked before data is loaded, and nothing is written into the run directory before the
run starts (the CLI removes the directory Hydra made when nothing ran).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from stagetrain import checkpoint as ckpt
from stagetrain import distributed
from stagetrain.core.errors import StagetrainError, StopRequested
from stagetrain.core.schema import RunConfig
from stagetrain.engine import Engine
from stagetrain.families import hook as family_hook
from stagetrain.families import vouched_by
from stagetrain.models import count_parameters
from stagetrain.nn.flops import analytic_flops
from stagetrain.progress import Reporter
from stagetrain.runs import preflight
from stagetrain.runs.config import engine_options, to_yaml, validate
from stagetrain.runs.device import choose_threads, pick_device
from stagetrain.runs.dryrun import dry_run
from stagetrain.runs.launch import continue_on_requeue, stop_on_signals
from stagetrain.runs.parts import build_parts, run_specs
from stagetrain.runs.record import RunRecord, write_plots
from stagetrain.runs.resume import open_run
from stagetrain.runs.rundir import RunDir

log = logging.getLogger("stagetrain")


def train(cfg: DictConfig, run_dir: str | Path | None, vouch: bool = True) -> dict[str, Any]:
    """Run one configured job; returns run.json's content (or the plan rows for a dry run).
    The code this launch's config names is vouched for first (``trust``): a resumed run's
    saved config and every spec read from a file may name only that. ``vouch=False``: ``cfg``
    was read from a file (a control's, from its staged run's record): only what the caller
    vouched for already."""
    with vouched_by(cfg) if vouch else contextlib.nullcontext():
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: str | Path | None) -> dict[str, Any]:
    settings = validate(cfg)
    if settings.dry_run:
        return dry_run(settings)
    main = distributed.join(settings.train.batch_size)  # only rank 0 writes the run directory
    rundir = RunDir(Path(run_dir))
    start = open_run(cfg, rundir, write_config=main)
    if start.completed:
        return start.previous
    settings = start.settings or settings
    device = pick_device(settings.device)
    preflight.check_run(settings, device, run_specs)  # sizes and memory, before anything is allocated
    parts = build_parts(settings, device, fresh=start.state is None)
    record = RunRecord.start(
        rundir if main else None, str(rundir.path.resolve()), parts.plan.to_dict(),
        OmegaConf.to_container(start.cfg, resolve=True), settings.seed, device,
        start.previous.get("source") if start.state is not None else parts.source, start.previous)
    record.info["data"] = parts.datasets["target"].info  # storage and why, statistics, classes, tokenizer
    record.info["threads"] = choose_threads(settings.device, device, analytic_flops(parts.model, 0))
    engine = Engine(parts.plan, engine_options(settings, to_yaml(start.cfg)), parts.datasets, parts.model, device,
                    Reporter(settings.progress if main else "off"), rundir if main else None, stop_flag={},
                    sinks=record.sinks(settings.logger), on_update=record.update)
    if start.state is not None:
        engine.restore(start.state)
    distributed.barrier()  # every rank has read the run directory before rank 0 writes to it
    if main:
        rundir.checkpoints.mkdir(parents=True, exist_ok=True)
        ckpt.preflight_disk(rundir.checkpoints, count_parameters(engine.model), settings.optim,
                            len(engine.plan.stages))
    record.note_world(settings.train.batch_size)
    if main and settings.progress != "off":
        from stagetrain.runs.banner import run_banner

        run_banner(settings, parts, engine, record.info["run_dir"], start.state)
    record.update(engine)
    continue_on_requeue()  # under submitit: a requeued job continues this run (resume=auto)
    final = _run(engine, record, settings, rundir, main)
    export = family_hook(settings.model, "export")  # e.g. model=hf: <run>/hf/ (save_pretrained)
    if main and export is not None:
        export(settings.model, engine.model, rundir.path)
    if main:  # under-trained / barely-learnt stages: the log, run.json, the final table (convergence.py)
        from stagetrain.runs.convergence import check_after_run

        check_after_run(record.info, rundir.path, parts.plan, parts.datasets, settings.progress != "off")
    record.finish(engine, final)
    for sink in engine.sinks:  # MLflow: run.json and the model as artifacts, the run's status
        getattr(sink, "finish", lambda: None)()
    distributed.barrier()
    return record.info


def _run(engine: Engine, record: RunRecord, settings: RunConfig, rundir: RunDir, main: bool) -> dict[str, float]:
    """The engine's run, with signals turned into a checkpointed stop and every failure
    recorded in run.json before it propagates."""
    stopped = False
    try:
        with stop_on_signals(engine.stop_flag):
            return engine.run()
    except (StopRequested, KeyboardInterrupt) as e:
        stopped = True
        how = f"stopped by {e}" if isinstance(e, StopRequested) else "aborted by a second Ctrl-C"
        record.update(engine, status="stopped", stop_reason="signal",
                      error=f"{how}; continue with resume=auto (hydra.run.dir={rundir.path})")
        raise
    except BaseException as e:
        err = _failure(e, engine.device)
        record.update(engine, status="failed", error=str(err) if isinstance(err, StagetrainError)
                      else f"{type(e).__name__}: {e}")
        if err is not e:
            raise err from None
        raise
    finally:
        engine.reporter.close()
        if settings.plots and main:  # before the sinks close: MLflow uploads a failed run's plots
            write_plots(rundir)
        for sink in engine.sinks:
            sink.close()
        if stopped:  # all ranks stopped at the same step: leave together, once rank 0 has written
            distributed.barrier()


def _failure(e: BaseException, device: torch.device) -> BaseException:
    """The error to report: a determinism failure of PyTorch explained, anything else as is."""
    if isinstance(e, RuntimeError) and "does not have a deterministic implementation" in str(e):
        return StagetrainError(
            f"device.deterministic=true, but this run needs an operation PyTorch cannot run "
            f"deterministically on {device.type.upper()} ({str(e).splitlines()[0][:120]}...). CNN auxiliary "
            "heads (adaptive pooling) and CNN decoders (upsampling) are such cases. Run it with "
            "device.deterministic=false.")
    return e

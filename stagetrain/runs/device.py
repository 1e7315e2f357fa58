"""The training device and process-wide determinism settings."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from stagetrain import distributed
from stagetrain.core.errors import StagetrainError
from stagetrain.core.schema import DeviceConfig
from stagetrain.runs.launch import job_threads, limit_job_threads

log = logging.getLogger("stagetrain")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(dcfg: DeviceConfig) -> torch.device:
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
        if name == "mps" or (name == "auto" and not torch.cuda.is_available() and _mps_available()):
            raise StagetrainError("torchrun with Apple MPS is not supported (no MPS backend for torch.distributed). "
                                  "Use device=cpu (gloo) or CUDA GPUs (NCCL).")
        if name in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(distributed.local_rank())
            return torch.device("cuda", distributed.local_rank())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagetrainError("device=cuda was asked for, but PyTorch sees no CUDA GPU here. Use device=cpu or device=auto.")
    if name == "mps" and not _mps_available():
        raise StagetrainError("device.name=mps was asked for, but Apple MPS is not available here. Use device=cpu or device=auto.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Training FLOPs per sample up to which one CPU thread is used when device.threads is not set.
# Measured on a busy 2-core machine (load 4-6): a digits MLP epoch (3.2e5 FLOPs/sample) took
# 0.02-1.4 s on 2 threads against 0.013-0.021 s on 1; an MLP of 670k parameters on 28x28 inputs
# (3.2e6 FLOPs/sample), 0.8-4.8 s against 0.16-0.18 s (a resnet on CIFAR-10: 7.4e7). Small
# steps cannot feed several threads: they wait on each other (and on other processes) more
# than they compute.
ONE_THREAD_FLOPS = 2e7


def choose_threads(dcfg: DeviceConfig, device: torch.device, flops_per_sample: float) -> dict[str, object]:
    """The CPU threads for a model of ``flops_per_sample`` training FLOPs per sample, and why:
    ``device.threads`` when set, a launcher's share of the cores, one thread for a small
    model, else torch's default. Applies it (``torch.set_num_threads``); run.json records it."""
    if device.type != "cpu":
        return {"threads": torch.get_num_threads(), "reason": f"training on {device.type}"}
    if dcfg.threads:
        threads, reason = int(dcfg.threads), "device.threads"
    elif (share := job_threads()) is not None:
        threads, reason = share
    elif flops_per_sample <= ONE_THREAD_FLOPS:
        threads = 1
        reason = (f"small model ({flops_per_sample:.3g} training FLOPs per sample <= {ONE_THREAD_FLOPS:.0e}): "
                  "one thread is faster than several; set device.threads to override")
    else:
        threads = _default_threads()
        reason = f"{flops_per_sample:.3g} training FLOPs per sample: torch's default, one per core"
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, reason)
    return {"threads": threads, "reason": reason}


_DEFAULT_THREADS = torch.get_num_threads()  # torch's own default, before anything changed it


def _default_threads() -> int:
    return _DEFAULT_THREADS

"""The training device and process-wide determinism settings."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from stagetrain import distributed
from stagetrain.errors import StagetrainError
from stagetrain.launch import limit_job_threads
from stagetrain.schema import DeviceConfig

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

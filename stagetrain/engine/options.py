"""EngineOptions: every run-level setting the engine reads besides the plan.

Built once from the validated config (``config.engine_options``); the engine never sees
the Hydra config. Together with the Plan it is the engine's whole input.
"""

from __future__ import annotations

from dataclasses import dataclass

from stagetrain.core.schema import CACHE_MAX_BYTES


@dataclass(frozen=True)
class EngineOptions:
    seed: int = 0
    batch_size: int = 64
    eval_batch_size: int = 1024
    patience: int | None = None  # default early stop of a stage (a stage may set its own)
    on_nonfinite: str = "stop"  # stop | skip_batch
    every_steps: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    stage_checkpoints: bool = True
    bf16: bool = False  # bf16 autocast for forward passes
    compile: bool = False  # torch.compile each stage's step
    shard: str = "none"  # none | fsdp: under torchrun, FSDP2 fully_shard per block within each stage
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    cache_max_bytes: int = CACHE_MAX_BYTES  # frozen-prefix feature cache budget
    cache_dtype: str = "fp32"  # fp32 | bf16 storage of cached features
    warmup_epochs: int = 0  # LR schedule: linear warm-up epochs at each stage start
    step_size: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    fused_optimizer: bool = True  # Adam/AdamW fused kernels on CPU and CUDA (optim.fused)
    config_yaml: str = ""  # the resolved config, stored in every checkpoint

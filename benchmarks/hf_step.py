"""Tokens per second of a training step of ``model=hf`` (a tiny LLaMA-style decoder): the engine
against a hand-written PyTorch loop over the same transformers model, and against
``transformers.Trainer`` on the same model and data.

* ``engine`` -- ``stagetrain.runs.runner.train`` (strategy=scratch, ``model=hf`` with
  ``model.config={model_type: llama, ...}``, byte-level LM windows of fortunes), everything at
  its defaults (metrics, checkpoints, fused Adam, cosine schedule, the non-finite check). Its
  time is run.json's stage ``seconds``: the training steps only (no evaluation, data reading or
  export).
* ``hand`` -- ``AutoModelForCausalLM.from_config`` of the config.json the engine run exported
  (``<run>/hf/``, so the same config: vocabulary 257, padding id 0, SDPA attention), the same
  training windows in the engine's order (``epoch_permutation``), the same batch: forward
  (``model(input_ids=...)`` as transformers' docs call it), next-token cross-entropy on the
  logits, ``zero_grad``, backward, fused Adam, the cosine LambdaLR. Timed over all its
  steps.
* ``trainer`` -- ``transformers.Trainer`` on that model class and config, over a torch
  ``Dataset`` of the same windows (``{"input_ids": w, "labels": w}``: the model shifts the
  labels itself, so it scores T-1 of the T positions), as its docs run it: learning rate, batch,
  one epoch, seed and the cosine schedule set; everything else at transformers' defaults
  (fused AdamW with weight decay 0 = Adam, gradient clipping at 1.0, its DataLoader and default
  collator, its own shuffling); no logging integrations, no checkpoints, no progress bar. Timed
  from its ``on_epoch_begin`` to its ``on_epoch_end`` callback (the epoch's batches and steps).

The hand loop and the Trainer call the model as transformers' docs do, with its default
``use_cache=True``: transformers 4.57 then fills a key/value cache even in training, but lets
SDPA take its ``is_causal`` path. ``use_cache=False`` is slower on the CPU (19 vs 15 ms a
forward+backward of the small model): without a cache its mask code checks the position ids
for packed sequences and passes SDPA an explicit mask.

tokens/s = windows x T / seconds for all three, by two clocks over the same span: wall time
and the process's CPU time (``time.process_time``; for the engine, that of
``Engine._train_epoch``, the epoch's steps, read by wrapping the method). With one torch
thread and no loader workers the CPU time is the work done; on a shared machine it is the
steadier of the two, since wall time also counts waiting for a core. The variants run
interleaved, the order rotating each repeat; the ratios are of the medians (and the median of
the per-repeat ratios). Target (issue 26): the engine takes at most 1.10x the hand loop's
time. Each variant's mean training loss over the epoch is recorded as a check that they train
the same task. Validation and test hold 2% of the text each (only the engine evaluates, and
outside the timed span). One torch thread, CPU only.

    STAGETRAIN_DATA=../shared/data python benchmarks/hf_step.py   # hidden 128, 4 layers, 64 tokens, 5 x 1,280 windows
    STAGETRAIN_DATA=../shared/data python benchmarks/hf_step.py --size small   # hidden 64, 2 layers, 32 tokens
    STAGETRAIN_DATA=../shared/data python benchmarks/hf_step.py --quick   # hidden 64, 2 layers, 320 windows, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from benchutil import (
    DATA_ROOT,
    RESULTS,
    RUN_ROOT,
    bar_plot,
    events,
    finish,
    machine,
    make_cfg,
    no_run_plots,
)

from stagetrain.data import epoch_permutation
from stagetrain.datasets import load_data
from stagetrain.engine import Engine
from stagetrain.nn.optim import lr_factor
from stagetrain.runs.runner import train

SIZES = {"full": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256,
                  "T": 64, "batch": 32, "windows": 1280},
         "small": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                   "T": 32, "batch": 32, "windows": 1280},
         "quick": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                   "T": 32, "batch": 32, "windows": 320}}
VARIANTS = ("engine", "hand", "trainer")


def overrides(size: dict[str, int]) -> list[str]:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    config = ", ".join(f"{k}: {size[k]}" for k in keys)
    return ["strategy=scratch", "model=hf", f"model.config={{model_type: llama, {config}}}", "dataset=fortunes",
            "dataset.task=lm", f"dataset.root={DATA_ROOT}", f"dataset.max_len={size['T']}",
            f"dataset.max_train={size['windows']}", f"train.batch_size={size['batch']}", "train.epochs=1",
            "dataset.val_fraction=0.02", "dataset.test_fraction=0.02", "device.threads=1", "plots=false"]


def run_engine(cfg: Any, run: Path) -> dict[str, Any]:
    clock = {"cpu_seconds": 0.0}
    epoch = Engine._train_epoch

    def timed(self: Engine, *args: Any) -> None:  # the engine unchanged; its epoch's CPU time read
        start = time.process_time()
        try:
            epoch(self, *args)
        finally:
            clock["cpu_seconds"] += time.process_time() - start

    with no_run_plots(), mock.patch.object(Engine, "_train_epoch", timed):
        info = train(cfg, run)
    stage = info["stages"][0]
    loss = [e["loss"] for e in events(run) if e.get("split") == "train"][-1]
    return {"seconds": stage["seconds"], "cpu_seconds": clock["cpu_seconds"], "windows": stage["samples"],
            "steps": stage["steps"], "loss": loss}


def hf_model(config_dir: Path, seed: int) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(config_dir)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()


def run_hand(config_dir: Path, x: torch.Tensor, y: torch.Tensor, cfg: Any) -> dict[str, Any]:
    model = hf_model(config_dir, cfg.seed)
    n, bs, lr = len(x), int(cfg.train.batch_size), float(cfg.optim.lr)
    vocab = model.config.vocab_size
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    steps = n // bs if n % bs == 1 and n > bs else -(-n // bs)  # the engine merges a lone last sample
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor("cosine", i, steps, steps, 0, 10, 0.1))
    losses = []
    start, cpu = time.perf_counter(), time.process_time()
    perm = epoch_permutation(n, cfg.seed, 0, 0, torch.device("cpu"))
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs] if i < steps - 1 else perm[i * bs:]
        logits = model(input_ids=x[idx]).logits  # the default call: see the module doc on use_cache
        loss = F.cross_entropy(logits.reshape(-1, vocab), y[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "windows": n, "steps": steps, "loss": float(torch.stack(losses).mean())}


def run_trainer(config_dir: Path, x: torch.Tensor, cfg: Any, out: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": x[i], "labels": x[i]}

    class EpochClock(TrainerCallback):
        seconds = cpu_seconds = 0.0

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seconds, self.cpu_seconds = time.perf_counter() - self.start, time.process_time() - self.cpu

    model = hf_model(config_dir, cfg.seed)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=int(cfg.train.batch_size),
                             num_train_epochs=1, learning_rate=float(cfg.optim.lr), lr_scheduler_type="cosine",
                             seed=int(cfg.seed), use_cpu=True, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_strategy="no")
    clock = EpochClock()
    trainer = Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[clock])
    output = trainer.train()
    return {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "windows": len(x), "steps": output.global_step,
            "loss": float(output.training_loss), "optim": str(args.optim.value),
            "max_grad_norm": args.max_grad_norm}


def summarise(rows: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Medians of ``key`` (tokens per second or per CPU-second), their time ratios, and the
    median of the per-repeat ratios (the two variants of a repeat ran under similar load)."""
    med = {n: statistics.median(row[key] for row in v) for n, v in rows.items()}

    def paired(a: str, b: str) -> float:  # time a / time b
        return statistics.median(rb[key] / ra[key] for ra, rb in zip(rows[a], rows[b], strict=True))

    return {**med, "engine_vs_hand": med["hand"] / med["engine"], "trainer_vs_engine": med["engine"] / med["trainer"],
            "trainer_vs_hand": med["hand"] / med["trainer"],
            "median_paired": {"engine_vs_hand": paired("engine", "hand"), "trainer_vs_engine": paired("trainer", "engine")}}


def plot(result: dict[str, Any], path: Path) -> None:
    s = result["summary"]["cpu"]
    bar_plot(path, {n: s[n] for n in VARIANTS}, ["tab:blue", "tab:grey", "tab:orange"],
             "training tokens / CPU-second (median)",
             f"model=hf step: engine/hand {s['engine_vs_hand']:.2f}x, trainer/engine {s['trainer_vs_engine']:.2f}x",
             fontsize=9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", choices=("full", "small"), default="full",
                   help="small: hidden 64, 2 layers, 32-token windows (a step ~8x cheaper: framework costs show more)")
    p.add_argument("--out", type=Path, default=None, help="default: results/hf_step.json (--size small: hf_step_small.json)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    start, info = time.perf_counter(), machine()
    size = SIZES["quick" if args.quick else args.size]
    args.out = args.out or RESULTS / ("hf_step.json" if args.size == "full" else "hf_step_small.json")
    repeats = 1 if args.quick else args.repeats
    cfg = make_cfg(*overrides(size))
    data = load_data(cfg.dataset, cfg.seed)  # the windows the engine trains on (same config, same seed)
    x, y = data.train.x, data.train.y
    root = Path(tempfile.mkdtemp(prefix="hf_step_", dir=RUN_ROOT))
    config_dir = root / "engine0" / "hf"  # the engine's first run exports its config here
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in VARIANTS}
    runners = {"engine": lambda r: run_engine(cfg, root / f"engine{r}"),
               "hand": lambda r: run_hand(config_dir, x, y, cfg),
               "trainer": lambda r: run_trainer(config_dir, x, cfg, root / f"trainer{r}")}
    for r in range(repeats):
        order = list(VARIANTS[r % 3:] + VARIANTS[:r % 3]) if r else list(VARIANTS)  # engine first: its config
        for name in order:
            row = runners[name](r)
            row["tokens_per_s"] = row["windows"] * size["T"] / row["seconds"]
            row["tokens_per_cpu_s"] = row["windows"] * size["T"] / row["cpu_seconds"]
            rows[name].append(row)
            print(f"repeat {r}: {name:>7} {row['tokens_per_s']:,.0f} tokens/s, {row['tokens_per_cpu_s']:,.0f} per CPU-s "
                  f"({row['steps']} steps, {row['seconds']:.2f} s, CPU {row['cpu_seconds']:.2f} s, mean loss "
                  f"{row['loss']:.3f})", flush=True)
    summary = {"wall": summarise(rows, "tokens_per_s"), "cpu": summarise(rows, "tokens_per_cpu_s"),
               "target_engine_vs_hand": 1.10}
    summary["meets_target"] = {c: summary[c]["engine_vs_hand"] <= 1.10 for c in ("wall", "cpu")}
    for c in ("wall", "cpu"):
        m = summary[c]
        print(f"{c}: engine {m['engine']:,.0f}, hand {m['hand']:,.0f}, trainer {m['trainer']:,.0f} tokens/s: engine "
              f"takes {m['engine_vs_hand']:.2f}x the hand loop's time, trainer {m['trainer_vs_engine']:.2f}x the engine's")
    result = {"machine": info, "settings": {**size, "model_type": "llama", "vocab_size": data.num_classes,
                                                 "overrides": overrides(size), "quick": args.quick,
                                                 "size": "quick" if args.quick else args.size,
                                                 "repeats": repeats, "lr": float(cfg.optim.lr)},
              "runs": rows, "summary": summary}
    json.dumps(result)
    finish(result, args, start, plot)


if __name__ == "__main__":
    main()

"""Tokens per second of a Transformer language-model training step: the engine against a
minimal hand-written PyTorch loop over the same model.

* ``engine`` -- ``stagetrain.runs.runner.train`` (strategy=scratch, dataset=text on a generated
  file, model=transformer with the lm head), everything at its defaults (metrics,
  checkpoints, fused Adam, cosine schedule). Its time is run.json's stage ``seconds``: the
  training steps only (no evaluation, no data reading).
* ``hand`` -- the same architecture (``StagedModel`` built from the engine run's arch spec,
  same seed), the same number of [batch, T] windows: slice a permutation, forward, next-token
  cross-entropy, ``zero_grad``, backward, fused Adam, LambdaLR. Timed over all its steps.

tokens/s = windows x T / seconds. Variants alternate (engine first on even repeats, hand first on odd ones), ``--repeats`` times each; the ratio
engine/hand of the medians is the number to read (target: the engine within 1.15x). The
model is that of ``conf/experiment/lm_grow_vs_scratch.yaml`` (d_model 64, 4 heads, 8
layers, 64-byte windows, batch 32). One torch thread. CPU only (no GPU part here).

    python benchmarks/lm_step.py               # 3 repeats x 1,280 windows (a few minutes on a busy 2-core machine)
    python benchmarks/lm_step.py --quick       # smaller model, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from benchutil import RESULTS, RUN_ROOT, bar_plot, finish, machine, make_cfg, no_run_plots

from stagetrain.models import StagedModel
from stagetrain.nn.optim import lr_factor
from stagetrain.runs.runner import train

SIZES = {"full": {"d_model": 64, "n_layers": 8, "T": 64, "batch": 32, "windows": 1280},
         "quick": {"d_model": 32, "n_layers": 2, "T": 32, "batch": 32, "windows": 320}}


def corpus(folder: Path, size: dict[str, int]) -> Path:
    """A generated text file of exactly enough windows for ``windows`` training windows (80% of it)."""
    words = "the quick brown fox jumps over a lazy dog while staged training grows small models".split()
    g = torch.Generator().manual_seed(0)
    need = int(size["windows"] * size["T"] / 0.8) + 4 * size["T"]
    text = []
    while sum(len(w) + 1 for w in text) < need:
        text.append(words[int(torch.randint(len(words), (1,), generator=g))])
    path = folder / "corpus.txt"
    path.write_text(" ".join(text), encoding="utf-8")
    return path


def run_engine(path: Path, size: dict[str, int], run: Path) -> dict[str, Any]:
    cfg = make_cfg("strategy=scratch", "dataset=text", f"dataset.paths=[{path}]", "model=transformer",
                   f"model.d_model={size['d_model']}", "model.n_heads=4", f"model.n_layers={size['n_layers']}",
                   f"dataset.max_len={size['T']}", f"model.max_len={size['T']}", f"dataset.max_train={size['windows']}",
                   f"train.batch_size={size['batch']}", "train.epochs=1", "device.threads=1", "plots=false")
    with no_run_plots():
        info = train(cfg, run)
    stage = info["stages"][0]
    arch = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["arch"]
    return {"seconds": stage["seconds"], "windows": stage["samples"], "steps": stage["steps"], "arch": arch,
            "lr": float(cfg.optim.lr)}


def run_hand(arch: dict[str, Any], size: dict[str, int], lr: float) -> dict[str, Any]:
    torch.manual_seed(0)
    model = StagedModel(arch).train()
    vocab, t, bs, n = arch["head"]["out"], size["T"], size["batch"], size["windows"]
    x = torch.randint(1, vocab, (n, t + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    steps = -(-n // bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor("cosine", i, steps, steps, 0, 10, 0.1))
    start = time.perf_counter()
    perm = torch.randperm(n)
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        logits = model(inputs[idx])
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {"seconds": time.perf_counter() - start, "windows": n, "steps": steps}


def plot(result: dict[str, Any], path: Path) -> None:
    s = result["summary"]
    bar_plot(path, {n: s[f"{n}_tokens_per_s"] for n in ("engine", "hand")}, ["tab:blue", "tab:grey"],
             "training tokens / s (median)", f"LM step, engine/hand time ratio {s['ratio']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "lm_step.json")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    size = SIZES["quick" if args.quick else "full"]
    root = Path(tempfile.mkdtemp(prefix="lm_step_", dir=RUN_ROOT))
    path = corpus(root, size)
    rows: dict[str, list[dict[str, Any]]] = {"engine": [], "hand": []}
    arch: dict[str, Any] = {}
    lr = 0.0
    for r in range(1 if args.quick else args.repeats):
        if r % 2:  # the order alternates: hand first on odd repeats (the arch of repeat 0)
            hand = run_hand(arch, size, lr)
            eng = run_engine(path, size, root / f"engine{r}")
        else:
            eng = run_engine(path, size, root / f"engine{r}")
            arch, lr = eng["arch"], eng["lr"]
            hand = run_hand(arch, size, lr)
        for name, row in (("engine", {k: v for k, v in eng.items() if k not in ("arch", "lr")}), ("hand", hand)):
            row["tokens_per_s"] = row["windows"] * size["T"] / row["seconds"]
            rows[name].append(row)
            print(f"repeat {r}: {name:>6} {row['tokens_per_s']:,.0f} tokens/s ({row['steps']} steps, {row['seconds']:.2f} s)")
    med = {n: statistics.median(x["tokens_per_s"] for x in v) for n, v in rows.items()}
    summary = {"engine_tokens_per_s": med["engine"], "hand_tokens_per_s": med["hand"],
               "ratio": med["hand"] / med["engine"], "target": 1.15}
    print(f"engine {med['engine']:,.0f} tokens/s, hand {med['hand']:,.0f}: engine takes {summary['ratio']:.2f}x the time")
    result = {"machine": machine(), "settings": {**size, "quick": args.quick, "repeats": args.repeats}, "runs": rows,
              "summary": summary}
    json.dumps(result)
    finish(result, args, start, plot)


if __name__ == "__main__":
    main()

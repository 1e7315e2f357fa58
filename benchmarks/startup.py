"""Start-up: seconds from the command to the first training step of the default job, against
what importing torch alone costs, measured in the same run.

Each repeat runs, in a fresh interpreter (``sys.executable``):

* ``torch``: ``import torch``;
* ``torch+dynamo``: ``import torch`` then ``import torch._dynamo`` -- every ``torch.optim``
  step imports it (``torch/optim/optimizer.py``: ``_use_grad_for_differentiable``), so no
  training run can start without paying it;
* ``first_step``: the console script's ``main()`` with ``train.epochs=1 plots=false
  progress=off``, timed from interpreter start to the first optimizer step (an optimizer
  step pre-hook prints the time and the process carries on).

Reported: the median seconds of each, and ``first_step`` as a ratio to ``torch+dynamo`` (the
floor any torch training run pays). Run it on an idle machine:

    python benchmarks/startup.py              # 5 repeats
    python benchmarks/startup.py --quick      # 2 repeats
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from benchutil import RESULTS, machine, write_json

PROBES = {
    "torch": "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)",
    "torch+dynamo": ("import time; t = time.perf_counter(); import torch; import torch._dynamo; "
                     "print(time.perf_counter() - t)"),
}
FIRST_STEP = """
import sys, time
T0 = time.perf_counter()
from torch.optim.optimizer import register_optimizer_step_pre_hook
seen = []
def hook(opt, args, kwargs):
    if not seen:
        seen.append(1)
        print("FIRST_STEP", time.perf_counter() - T0, flush=True)
register_optimizer_step_pre_hook(hook)
sys.argv = ["stagetrain", "train.epochs=1", "plots=false", "progress=off"]
from stagetrain.app.cli import main
main()
"""


def _seconds(code: str, cwd: Path) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("FIRST_STEP") or line[:1].isdigit())
    return float(line.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    result = {"machine": machine(), "repeats": repeats, "seconds": {k: [] for k in [*PROBES, "first_step"]}}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(repeats):
            for name, code in PROBES.items():
                result["seconds"][name].append(_seconds(code, Path(cwd)))
            result["seconds"]["first_step"].append(_seconds(FIRST_STEP, Path(cwd)))
    result["median"] = {k: median(v) for k, v in result["seconds"].items()}
    result["first_step_over_torch_and_dynamo"] = result["median"]["first_step"] / result["median"]["torch+dynamo"]
    result["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    out = args.out.with_name(args.out.stem + "_quick.json") if args.quick else args.out
    write_json(out, result)
    print(json.dumps(result["median"], indent=1), f"ratio {result['first_step_over_torch_and_dynamo']:.2f}")


if __name__ == "__main__":
    main()

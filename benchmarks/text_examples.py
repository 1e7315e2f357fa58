"""Text examples: wall and training seconds of the README's two fortunes commands (category
classification and a byte-level language model, small transformers from scratch), against
the default digits job (``strategy=scratch``, the same epochs) measured in the same run; and
the padding mask's cost: the classification model's forward+backward with its padding-masked
spec against the same weights without the mask (``padding`` removed from the spec).

Needs the fortunes collection (``STAGETRAIN_DATA`` holding ``text/fortunes``). Run it on an
idle machine:

    python benchmarks/text_examples.py            # 3 repeats
    python benchmarks/text_examples.py --quick    # 1 repeat
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from benchutil import DATA_ROOT, RESULTS, RUN_ROOT, machine, make_cfg, no_run_plots, write_json

from stagetrain.families import build_spec
from stagetrain.models import StagedModel
from stagetrain.runs.runner import train

TINY = ["model=transformer", "strategy=scratch", "model.d_model=32", "model.n_layers=1", "dataset.max_len=64",
        "train.epochs=2", "plots=false", "device.threads=1", f"dataset.root={DATA_ROOT}"]
JOBS = {
    "fortunes_classification": [*TINY, "dataset=fortunes", "dataset.max_train=2000"],
    "fortunes_lm": [*TINY, "dataset=fortunes", "dataset.task=lm", "dataset.max_train=1000"],
    "digits_reference": ["strategy=scratch", "train.epochs=2", "plots=false", "device.threads=1"],
}


def _job(overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=RUN_ROOT) as tmp:
        start = time.perf_counter()
        info = train(make_cfg(*overrides), Path(tmp) / "run")
        return {"wall": time.perf_counter() - start, "train_seconds": info["seconds"], **info["final"]}


def _mask_cost(repeats: int) -> dict[str, float]:
    """Seconds per forward+backward of a batch of 64 padded texts, masked vs unmasked spec."""
    from stagetrain.datasets import load_data
    from stagetrain.runs.config import validate

    settings = validate(make_cfg(*JOBS["fortunes_classification"]))
    data = load_data(settings.dataset, 0)
    masked = StagedModel(build_spec(settings.model, data.in_shape, data.num_classes))
    plain_spec = {**masked.spec, "stem": {k: v for k, v in masked.spec["stem"].items() if k != "padding"},
                  "blocks": [{k: v for k, v in b.items() if k != "padding"} for b in masked.spec["blocks"]],
                  "head": {k: v for k, v in masked.spec["head"].items() if k != "padding"}}
    plain = StagedModel(plain_spec)
    plain.load_state_dict(masked.state_dict())
    x, y = data.train.x[:64], data.train.y[:64]
    out = {}
    for name, model in (("masked", masked), ("unmasked", plain)):
        times = []
        for _ in range(repeats * 20):
            start = time.perf_counter()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            times.append(time.perf_counter() - start)
        out[name] = median(times[5:])
    out["masked_over_unmasked"] = out["masked"] / out["unmasked"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "text_examples.json")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(1)
    result = {"machine": machine(), "repeats": repeats, "jobs": {name: JOBS[name] for name in JOBS}, "runs": {}}
    with no_run_plots():
        for name, overrides in JOBS.items():
            result["runs"][name] = [_job(overrides) for _ in range(repeats)]
    result["median_wall"] = {k: median(r["wall"] for r in v) for k, v in result["runs"].items()}
    ref = result["median_wall"]["digits_reference"]
    result["wall_over_digits"] = {k: v / ref for k, v in result["median_wall"].items()}
    result["padding_mask"] = _mask_cost(repeats)
    result["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    out = args.out.with_name(args.out.stem + "_quick.json") if args.quick else args.out
    write_json(out, result)
    print(json.dumps({"median_wall": result["median_wall"], "padding_mask": result["padding_mask"]}, indent=1))


if __name__ == "__main__":
    main()

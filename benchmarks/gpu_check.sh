#!/usr/bin/env bash
# Everything of stagetrain that needs a GPU, in one command, in under 8 minutes, into one JSON:
#
#   1. cuda_tests   the CUDA tests (pytest -m cuda: tests/test_cuda.py and any other test marked cuda)
#   2. families     bf16 + torch.compile on one GPU: step time, achieved FLOP/s and the fraction of the
#                   GPU's dense bf16 peak, for an MLP, a CNN and a Transformer (the engine's FLOP counts)
#   3. sharding     benchmarks/sharding.py on all visible GPUs: DDP (NCCL gradients) against FSDP2
#                   (device.shard=fsdp), memory per rank (torch.cuda.max_memory_allocated) and step
#                   time; needs 2 or more GPUs (recorded as not run on one)
#   4. scaling      benchmarks/scaling.py's GPU part: MLP epoch eager / compiled / compiled bf16 against
#                   its targets, CNN bf16 + compile fraction of peak
#
# Usage (from anywhere, in the environment that has stagetrain installed):
#   benchmarks/gpu_check.sh                     # writes benchmarks/results/gpu_check.json
#   benchmarks/gpu_check.sh /tmp/gpu.json       # writes there
# Each step has its own time limit (110 + 110 + 140 + 100 s: at most 7.7 min plus start-up);
# a step that fails or runs out of time is recorded with its exit status and the tail of its
# output, and the others still run. The JSON is written once, at the end; the script exits 0
# only when every step that ran succeeded. Without a CUDA GPU it runs nothing, writes nothing
# and exits 2. PYTHON=... picks the interpreter (default: python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/benchmarks/results/gpu_check.json}")"
PY="${PYTHON:-python}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False, or torch is" \
         "not importable by $PY): nothing was run and nothing written. Run it on a machine with an" \
         "NVIDIA GPU and a CUDA build of torch." >&2
    exit 2
fi

cd "$ROOT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
START=$SECONDS

# step NAME LIMIT COMMAND...: run COMMAND with a time limit; its exit status, seconds and output
# go to $WORK/NAME.{rc,seconds,log}
step() {
    local name=$1 limit=$2 begin=$SECONDS rc=0
    shift 2
    echo "gpu_check: $name (at most ${limit} s) ..." >&2
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/$name.rc"
    echo $((SECONDS - begin)) >"$WORK/$name.seconds"
    echo "gpu_check: $name exit $rc after $((SECONDS - begin)) s" >&2
}

step cuda_tests 110 "$PY" -m pytest -m cuda -q -p no:randomly -p no:cacheprovider tests \
    --junitxml="$WORK/cuda_tests.xml"

step families 110 "$PY" - "$WORK/families.json" <<'PYTHON'
import json, math, sys, tempfile
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch
from benchutil import make_cfg, no_run_plots
from scaling import BF16_PEAK, timed_epochs

from stagetrain.runs.runner import train

name = torch.cuda.get_device_name()
peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
common = ["device=cuda", "device.precision=bf16", "device.compile=true", "strategy=scratch", "train.epochs=3",
          "dataset=synthetic", "dataset.n_test=1000", "plots=false", "progress=off"]
families = {
    "mlp": ["model.widths=[1024,1024,1024]", "dataset.shape=[1,28,28]", "dataset.n_train=60000",
            "train.batch_size=512"],
    "cnn": ["model=cnn", "model.channels=[128,256,512]", "dataset.shape=[3,32,32]", "dataset.n_train=50000",
            "train.batch_size=512"],
    "transformer": ["model=transformer", "model.d_model=512", "model.n_heads=8", "model.n_layers=6",
                    "model.patch=4", "dataset.shape=[3,32,32]", "dataset.n_train=20000", "train.batch_size=256"],
}
out = {"device": name, "bf16_peak_flop_per_s": peak}
with tempfile.TemporaryDirectory() as root:
    for family, extra in families.items():
        seconds, patch = timed_epochs()
        with patch, no_run_plots():
            info = train(make_cfg(*common, *extra), Path(root) / family)
        epoch = sorted(seconds[1:])[len(seconds[1:]) // 2]  # the first epoch compiles
        steps = info["global_step"] / len(seconds)
        flop_per_s = info["flops"] / len(seconds) / epoch
        out[family] = {"overrides": extra, "epoch_seconds": seconds, "step_ms": 1000 * epoch / steps,
                       "flop_per_s": flop_per_s, "fraction_of_bf16_peak": flop_per_s / peak if peak else None,
                       "test_acc": info["final"].get("test/acc")}
        print(family, json.dumps(out[family]), flush=True)
Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
PYTHON

if [ "$GPUS" -ge 2 ]; then
    step sharding 140 "$PY" benchmarks/sharding.py --skip-cpu --repeats 1 --out "$WORK/sharding.json"
else
    echo "not run: $GPUS GPU; DDP over NCCL and FSDP need 2 or more" >"$WORK/sharding.skipped"
fi

step scaling 100 "$PY" benchmarks/scaling.py --skip-cpu --quick --out "$WORK/scaling.json"

mkdir -p "$(dirname "$OUT")"
"$PY" - "$WORK" "$OUT" $((SECONDS - START)) <<'PYTHON'
import json, os, sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, "benchmarks")
from benchutil import machine

work, out, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
import torch

result = {"machine": {**machine(), "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
          "total_seconds": total, "steps": {}}
for name in ("cuda_tests", "families", "sharding", "scaling"):
    if (work / f"{name}.skipped").exists():
        result["steps"][name] = {"status": (work / f"{name}.skipped").read_text().strip()}
        continue
    rc = int((work / f"{name}.rc").read_text())
    entry = {"status": "ok" if rc == 0 else ("timed out" if rc in (124, 137) else "failed"), "exit": rc,
             "seconds": int((work / f"{name}.seconds").read_text()),
             "log_tail": (work / f"{name}.log").read_text(errors="replace")[-3000:]}
    for found in (work / f"{name}.json", work / f"{name}_quick.json"):  # scaling.py --quick adds _quick
        if found.exists():
            entry["result"] = json.loads(found.read_text())
    result["steps"][name] = entry
junit = work / "cuda_tests.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    result["steps"]["cuda_tests"]["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
result["ok"] = all(s.get("exit", 0) == 0 for s in result["steps"].values())
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
os.replace(tmp, out)
print(f"gpu_check: wrote {out}; " + ", ".join(f"{k}: {v['status']}" for k, v in result["steps"].items()))
sys.exit(0 if result["ok"] else 1)
PYTHON

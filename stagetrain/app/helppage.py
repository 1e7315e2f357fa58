"""``stagetrain --help`` and ``--version``: stagetrain's own pages, printed without
importing torch or composing a config (Hydra's page stays at ``--hydra-help``).

The config groups and their options are read from the packaged ``conf/`` folder, so a new
YAML file shows up here by itself; its line is the one in ``LINES`` or, failing that, the
first comment line of the file. Hydra's internal ``schema/*`` groups live in the
ConfigStore, not in ``conf/``, and are not listed.
"""

from __future__ import annotations

import re
from importlib import metadata, resources

GROUPS = {  # config group -> what choosing an option of it does
    "strategy": "how the model is trained (the question stagetrain answers)",
    "dataset": "what it is trained on",
    "model": "the architecture, built from named blocks and a head",
    "device": "where it runs",
    "experiment": "a documented comparison, run as a sweep with -m",
    "arm": "one arm of a comparison: a strategy with the options that define it",
    "hydra/launcher": "how a sweep's jobs are launched",
}

LINES = {  # group/option -> one line
    "strategy/scratch": "the baseline: the whole model from random init, trained end to end",
    "strategy/layerwise": "greedy layer-wise pretraining (4 objectives), then fine-tuning (default)",
    "strategy/grow": "progressive growth: start small, widen/deepen (Net2Net) at each trigger",
    "strategy/finetune": "transfer: fine-tune a source run's weights, or pretrain in the same run",
    "dataset/digits": "scikit-learn's 8x8 digits, built in (no download); the default",
    "dataset/mnist": "MNIST from <dataset.root>/MNIST/raw (or $STAGETRAIN_DATA/MNIST/raw)",
    "dataset/fashion_mnist": "Fashion-MNIST from <dataset.root>/FashionMNIST/raw (Debian package too)",
    "dataset/cifar10": "CIFAR-10 through torchvision (dataset.download=true the first time)",
    "dataset/synthetic": "seeded Gaussian class prototypes generated in memory, any shape",
    "dataset/imagefolder": "your images, <dataset.root>/train/<class>/*.png (val/, test/ optional)",
    "dataset/text": "byte-level language modelling on local UTF-8 files (dataset.paths)",
    "dataset/text_classification": "labelled texts from JSONL, CSV or a folder of class files",
    "dataset/fortunes": "Debian fortunes: 43 categories to classify, or task=lm text",
    "model/mlp": "fully connected blocks (model.widths), optional BatchNorm, dropout",
    "model/cnn": "conv + pool blocks (model.channels), optional dense blocks (model.fc_widths)",
    "model/resnet": "residual stages (model.stage_channels, blocks_per_stage, basic|bottleneck)",
    "model/transformer": "pre-LayerNorm Transformer on image patches or tokens (d_model, n_heads, n_layers)",
    "model/custom": "any nn.Module by import path (model.target), cut by submodule names",
    "model/torchvision": "torchvision.models.<model.arch> (resnet18, mobilenet, vit_b_16, ...)",
    "device/auto": "CUDA if available, else Apple MPS, else CPU; the default",
    "device/cpu": "the CPU (device.threads sets the threads)",
    "device/cuda": "a CUDA GPU (device.precision=bf16 for autocast)",
}

EXAMPLES = [
    ("stagetrain", "the default job: layer-wise pretraining of an MLP on digits"),
    ("stagetrain strategy=scratch train.epochs=5", "the baseline, 5 epochs"),
    ("stagetrain strategy=layerwise strategy.objective=denoising dry_run=true",
     "print the plan (stages, epochs, FLOPs) without training"),
    ("stagetrain -m strategy=scratch,layerwise,grow seed=0,1,2",
     "a sweep: 9 runs, summarised in the sweep directory"),
    ("stagetrain hydra.run.dir=outputs/a resume=auto", "continue (or skip, if completed) the run in outputs/a"),
]

PAGE = """\
stagetrain {version} - staged neural-network training, compared with training from scratch
at equal compute (PyTorch + Hydra). One command composes a config, compiles the chosen
strategy into a plan of stages, trains it, and ends with a table of per-stage metrics.

usage: stagetrain [group=option ...] [key=value ...] [-m] [--cfg job] [--help] [--version]

config groups (pick one option each: group=option):
{groups}

examples:
{examples}

settings: any key is set on the command line (train.epochs=5 optim.lr=0.01 seed=1); quote
values with brackets or comparisons: "model.widths=[256,128]" "strategy.target='val/acc>=0.97'".
See them all with `stagetrain --cfg job`; the plan of a run with dry_run=true.

outputs: a run writes outputs/<date>/<time>_<strategy>_<id>/ (or hydra.run.dir=<dir>):
run.json (status, config, per-stage and final metrics), metrics.jsonl, stagetrain.log,
checkpoints/, model.safetensors, plots/. A sweep (-m) writes outputs/multirun/<date>/<time>_<id>/
with one run directory per job and summary.csv/.md/.png. Compare runs with stagetrain-report.

more: --version (stagetrain, torch, Hydra), --hydra-help (Hydra's own flags), --info defaults,
and the README of the repository.
"""


def _options(group: str) -> list[tuple[str, str]]:
    """(option, first comment line) of each YAML file of ``group`` in the packaged conf/."""
    folder = resources.files("stagetrain.conf")
    for part in group.split("/"):
        folder = folder / part
    if not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            out.append((f.name[: -len(".yaml")], _first_sentence(f.read_text())))
    return out


def _first_sentence(yaml_text: str) -> str:
    """The first sentence of a YAML file's leading comment, shortened to fit one line."""
    lines = []
    for line in yaml_text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("# ").strip())
    text = re.sub(r"(\w)- (\w)", r"\1\2", " ".join(lines))  # a word split at a hyphen
    text = re.sub(r"^(Question|Arm \S+):\s*", "", text)
    first = re.split(r"(?<=[.?;])\s", text)[0].rstrip(".;")
    return first if len(first) <= 75 else first[:72].rsplit(" ", 1)[0] + " ..."


LAUNCHERS = {  # hydra/launcher option -> (the plugin module it needs, one line, the extra installing it)
    "basic": (None, "Hydra's default: the jobs one after another in this process", None),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel local jobs (hydra.launcher.n_jobs)", "joblib"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "SLURM job arrays through submitit", "slurm"),
}


def _launchers() -> list[tuple[str, str]]:
    """The launchers, each saying whether this environment can use it (its plugin installed)."""
    from importlib.util import find_spec

    out = []
    for name, (module, line, extra) in LAUNCHERS.items():
        try:
            usable = module is None or find_spec(module) is not None
        except (ImportError, ValueError):
            usable = False
        out.append((name, line if usable else f"not installed here: pip install 'stagetrain[{extra}]'"))
    return out


def help_text() -> str:
    groups = []
    for group, what in GROUPS.items():
        groups.append(f"  {group}: {what}")
        for option, comment in _launchers() if group == "hydra/launcher" else _options(group):
            line = LINES.get(f"{group}/{option}", comment)
            row = f"    {option:<22} {line}" if line else f"    {option}"
            groups.append(row if len(row) <= 100 else row[:96].rsplit(" ", 1)[0] + " ...")
    examples = [f"  {cmd}\n      {what}" for cmd, what in EXAMPLES]
    return PAGE.format(version=version("stagetrain"), groups="\n".join(groups), examples="\n".join(examples))


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        if dist == "stagetrain":
            from stagetrain.core.version import __version__

            return __version__
        return "not installed"


def version_text() -> str:
    """One line: stagetrain's, torch's, torchvision's (``model=torchvision`` builds its networks)
    and Hydra's versions (from the installed packages' metadata, so that torch is not imported)."""
    return (f"stagetrain {version('stagetrain')} (torch {version('torch')}, torchvision {version('torchvision')}, "
            f"hydra-core {version('hydra-core')}, Python {_python()})")


def _python() -> str:
    import platform

    return platform.python_version()

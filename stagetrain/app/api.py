"""The Python API, for notebooks and cluster scripts: ``stagetrain.run`` and ``stagetrain.load``.

``run`` and the ``stagetrain`` console script run one command through the same function,
``cli.execute(overrides) -> Outcome`` (the same command-line checks, Hydra composition, run
directory, logging and files), in this process; ``run`` returns the run record the run wrote
to ``run.json`` (the outcome is a return value: no module state carries it)::

    import stagetrain
    info = stagetrain.run(["strategy=layerwise", "train.epochs=5"], run_dir="outputs/lw")
    print(info["final"]["test/acc"])
    run = stagetrain.load("outputs/lw")
    run.model        # the trained StagedModel, rebuilt from model.safetensors
    run.config       # the run's config (an OmegaConf DictConfig)
    run.metrics      # every line of metrics.jsonl (a list of dicts)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagetrain.core.errors import StagetrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from stagetrain.data import DataBundle
    from stagetrain.models import StagedModel


class RunFailed(StagetrainError):
    """A run that was refused, failed, or was stopped; ``info`` is its run record, if any."""

    def __init__(self, message: str, info: dict[str, Any] | None = None):
        super().__init__(message)
        self.info = info


def run(overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one job as ``stagetrain <overrides>`` would and return its run record (the
    content of ``run.json``: status, config, per-stage summaries, final metrics, run_dir).

    ``run_dir`` is ``hydra.run.dir`` (default: a new directory under ``outputs/``); add
    ``resume=auto`` to the overrides to continue or skip a run already there. With
    ``dry_run=true`` the record holds the plan and nothing is written. A refused command
    line, a failed run or a stopped one raises :class:`RunFailed` with the message the
    console script prints. Sweeps (``-m``) are the console script's job.
    """
    from stagetrain.app.cli import execute

    overrides = [str(o) for o in overrides]
    if any(a in ("-m", "--multirun") for a in overrides):
        raise ValueError("stagetrain.run runs one job; run a sweep (-m) with the stagetrain command.")
    if run_dir is not None:
        overrides.append(f"hydra.run.dir={Path(run_dir).expanduser().absolute()}")
    outcome = execute(overrides)  # the console script's own command, its outcome returned
    info = outcome.info
    if outcome.code not in (0, None) or info is None:
        record = None
        if run_dir is not None and (Path(run_dir) / "run.json").is_file():
            record = _record(Path(run_dir))
        raise RunFailed(outcome.error or f"stagetrain {' '.join(overrides)} exited with status {outcome.code}",
                        record)
    if info.get("dry_run") or "run_dir" not in info:
        return info
    path = Path(info["run_dir"])
    return _record(path) if (path / "run.json").is_file() else info


def _record(run_dir: Path) -> dict[str, Any]:
    """A run directory's run.json (through the file gate; a damaged one is a StagetrainError)."""
    from stagetrain.runs.rundir import RunDir

    return RunDir(run_dir).read_run_json()


@dataclass
class Run:
    """A finished (or stopped) run read back from its directory."""

    path: Path
    info: dict[str, Any]
    config: DictConfig
    metrics: list[dict[str, Any]]
    model: StagedModel = field(repr=False)

    @property
    def final(self) -> dict[str, float]:
        """The final metrics (val/test loss and accuracy) from run.json."""
        return self.info.get("final", {})

    @property
    def status(self) -> str:
        return self.info.get("status", "?")

    def data(self) -> DataBundle:
        """The run's dataset, split as in training (same seed). The model expects inputs
        normalised as in training: ``bundle.normalize(x)`` (``mode="unit"`` for RBM runs)."""
        from stagetrain.datasets import load_data

        return load_data(self.config.dataset, seed=int(self.config.seed))


def load(run_dir: str | Path, trust_target: str | None = None) -> Run:
    """Read a run directory: its record (run.json), config, metrics (metrics.jsonl) and the
    trained model, rebuilt from the architecture spec and weights in ``model.safetensors``
    (written when a run completes). The model is on the CPU, in eval mode.

    A run of your own network (``model=custom``) names its class or builder in its files;
    stagetrain calls it only when you vouch for it: ``trust_target="mypkg.nets.Net"``."""
    from stagetrain.core import trust

    with trust.vouched([trust_target] if trust_target else []):
        return _load(Path(run_dir).expanduser())


def _load(path: Path) -> Run:
    from omegaconf import OmegaConf

    from stagetrain.models import StagedModel
    from stagetrain.runs.rundir import read_metrics
    from stagetrain.source import load_source

    if not (path / "run.json").is_file():
        raise StagetrainError(f"{path} is not a stagetrain run directory (no run.json).")
    info = _record(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise StagetrainError(
            f"{path} has no model.safetensors: the run's status is {info.get('status')!r} (it is written "
            f"when a run completes). Continue it with: stagetrain hydra.run.dir={path} resume=auto")
    source = load_source(str(weights))
    model = StagedModel(source.arch)
    model.load_state_dict(source.state)
    model.eval()
    metrics = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    return Run(path=path.resolve(), info=info, config=OmegaConf.create(info.get("config", {})),
               metrics=metrics, model=model)

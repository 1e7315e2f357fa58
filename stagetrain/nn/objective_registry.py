"""The objective registry: one record per stage objective holding everything generic code
needs to know about it, so the engine, the baselines, the convergence check and the plan
look an objective up instead of comparing its name (torch-free; the losses themselves are
``objectives.LOSSES``, keyed by the same names).

Like the part-type registry (``models/registry.py``): ``register`` adds a record, and
``objective_type(name)`` finds it or refuses the name in one paragraph. An objective that
takes parameters declares their typed record (``args``: ``DenoisingArgs``, ``RBMArgs``); a
stage carries one as ``Stage.objective_args`` (``as_args``), run.json as its plain dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from stagetrain.core.errors import StagetrainError, check_types


@dataclass(frozen=True)
class DenoisingArgs:
    """denoising's parameters: each input unit is zeroed with probability ``noise`` in training."""

    noise: float = 0.0


@dataclass(frozen=True)
class RBMArgs:
    """rbm's parameters: ``cd_k`` Gibbs steps of contrastive divergence."""

    cd_k: int = 1


@dataclass(frozen=True)
class ObjectiveType:
    """One registered stage objective.

    ``through_head``: a stage of it on the whole model without a helper trains and evaluates
    the model itself (its head); ``follows_head``: through a head that says what it trains
    (an LM head, a model=hf head) it trains that (a supervised stage on a language model
    trains ``lm``; ``objectives.objective_of``);
    ``metrics``: the split metrics beyond the loss (``acc``; ``ppl`` and ``bpb``);
    ``baseline``: its trivial baseline's kind (``runs/baselines.py``: ``majority``, ``unigram``,
    ``mean_image``), ``baseline_raw_input_only``: that baseline applies only to a stage
    whose trained block reads the raw input (block 1); ``targets``: what its tokens' targets
    are (``next``: the next token; ``inputs``: the input tokens themselves, mlm); ``helper``:
    the helper kind a greedy (layer-wise) stage of it builds (None: none);
    ``labels``: it reads the labels (labelled subset) rather than every training input;
    ``noisy``: the input is corrupted in training (denoising); ``comparable_loss``: its
    training loss is comparable over time (contrastive divergence is not); ``input_norm``:
    how the run normalises its inputs (``unit`` for RBMs); ``causal``: a transformer trained
    on it needs causal (True) or bidirectional (False) attention (None: either);
    ``mask_token``: it needs a mask token in the vocabulary; ``predicts``: what it predicts,
    in words (plan descriptions); ``args``: the dataclass of its parameters (None: it takes none).
    """

    name: str
    through_head: bool = False
    follows_head: bool = False
    metrics: tuple[str, ...] = ()
    baseline: str | None = None
    baseline_raw_input_only: bool = False
    targets: str | None = None  # next | inputs (token objectives); None: labels or inputs to reconstruct
    helper: str | None = None
    labels: bool = False
    noisy: bool = False
    comparable_loss: bool = True
    input_norm: str = "standardize"
    causal: bool | None = None
    mask_token: bool = False
    predicts: str = ""
    args: type | None = None

    def args_from(self, offered: dict[str, Any]) -> Any:
        """Its parameters from ``offered`` (a greedy plan's settings, an older plan's flat
        stage keys): the fields ``args`` declares, the rest ignored; None if it takes none."""
        if self.args is None:
            return None
        return self.args(**{f.name: offered[f.name] for f in fields(self.args) if f.name in offered})

    @property
    def tokens(self) -> bool:
        """True for a language-modelling objective (its targets are tokens)."""
        return self.targets is not None


OBJECTIVE_TYPES: dict[str, ObjectiveType] = {}


def register(objective: ObjectiveType) -> ObjectiveType:
    OBJECTIVE_TYPES[objective.name] = objective
    return objective


def find(name: str | None) -> ObjectiveType | None:
    """The record of ``name``; None for a name no one registers (e.g. an old run.json's)."""
    return OBJECTIVE_TYPES.get(name or "")


def objective_type(name: str) -> ObjectiveType:
    """The record of ``name``, or one paragraph naming the registered objectives."""
    found = find(name)
    if found is None:
        raise StagetrainError(
            f"A stage names the objective {name!r}, which is not registered (registered: "
            f"{', '.join(sorted(OBJECTIVE_TYPES))}). The plan or checkpoint may come from a newer stagetrain.")
    return found


def as_args(objective: str, value: Any) -> Any:
    """A stage's ``objective_args`` as the objective's typed record: its defaults for None, a
    plain dict (run.json) read into it; None for an objective without parameters (or one no
    one registers, refused where it is used). Anything else is one paragraph."""
    kind = find(objective)
    if kind is None or (kind.args is None and value is None):
        return value
    if kind.args is None:
        raise StagetrainError(f"A stage of objective {objective!r} gives objective_args {value!r}, but that objective "
                              "takes no parameters; leave objective_args null.")
    if isinstance(value, kind.args):
        return value
    names = [f.name for f in fields(kind.args)]
    if value is None:
        return kind.args()
    if isinstance(value, dict) and set(value) <= set(names):
        check_types(kind.args, value, f"A stage's {objective} parameters")
        return kind.args(**value)
    raise StagetrainError(f"A stage of objective {objective!r} gives objective_args {value!r}; it takes a mapping "
                          f"of {', '.join(names)} ({kind.args.__name__}).")


def args_dict(args: Any) -> dict[str, Any] | None:
    """run.json's form of a stage's ``objective_args``: a plain dict, or None."""
    return None if args is None else asdict(args)


register(ObjectiveType("supervised", through_head=True, follows_head=True, metrics=("acc",), baseline="majority",
                       helper="aux_head", labels=True, predicts="the class label"))
register(ObjectiveType("lm", through_head=True, metrics=("ppl", "bpb"), baseline="unigram", targets="next",
                       causal=True, predicts="the next token"))
register(ObjectiveType("mlm", metrics=("ppl", "bpb"), baseline="unigram", targets="inputs", causal=False,
                       mask_token=True, predicts="masked tokens (15%, 80/10/10)"))
register(ObjectiveType("autoencoder", baseline="mean_image", baseline_raw_input_only=True, helper="decoder",
                       predicts="the block's input"))
register(ObjectiveType("denoising", baseline="mean_image", baseline_raw_input_only=True, helper="decoder",
                       noisy=True, predicts="the block's clean input from a masked one", args=DenoisingArgs))
register(ObjectiveType("rbm", baseline="mean_image", baseline_raw_input_only=True, helper="rbm",
                       comparable_loss=False, input_norm="unit", predicts="the block's input (CD-k)", args=RBMArgs))

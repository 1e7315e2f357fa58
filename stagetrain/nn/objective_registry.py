"""The objective registry: one record per stage objective holding everything generic code
needs to know about it, so the engine, the baselines, the convergence check and the plan
look an objective up instead of comparing its name (torch-free; the losses themselves are
``objectives.LOSSES``, keyed by the same names).

Like the part-type registry (``models/registry.py``): ``register`` adds a record, and
``objective_type(name)`` finds it or refuses the name in one paragraph.
"""

from __future__ import annotations

from dataclasses import dataclass

from stagetrain.core.errors import StagetrainError


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
    in words (plan descriptions).
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


register(ObjectiveType("supervised", through_head=True, follows_head=True, metrics=("acc",), baseline="majority",
                       helper="aux_head", labels=True, predicts="the class label"))
register(ObjectiveType("lm", through_head=True, metrics=("ppl", "bpb"), baseline="unigram", targets="next",
                       causal=True, predicts="the next token"))
register(ObjectiveType("mlm", metrics=("ppl", "bpb"), baseline="unigram", targets="inputs", causal=False,
                       mask_token=True, predicts="masked tokens (15%, 80/10/10)"))
register(ObjectiveType("autoencoder", baseline="mean_image", baseline_raw_input_only=True, helper="decoder",
                       predicts="the block's input"))
register(ObjectiveType("denoising", baseline="mean_image", baseline_raw_input_only=True, helper="decoder",
                       noisy=True, predicts="the block's clean input from a masked one"))
register(ObjectiveType("rbm", baseline="mean_image", baseline_raw_input_only=True, helper="rbm",
                       comparable_loss=False, input_norm="unit", predicts="the block's input (CD-k)"))

"""Stage objectives: the loss of one batch, and the helper modules some objectives need.

* supervised  -- cross-entropy through the model's head, or through an auxiliary head
                 (stagetrain/nn/auxheads.py: linear, conv, mlp_sr)
* lm          -- causal language modelling: next-token cross-entropy (nats) through the
                 model's per-position ``lm_head`` (a supervised stage through an LM head is one),
                 or through an auxiliary LM head (layer-wise on LM data; in-run pretraining on
                 padded texts, where the targets are the input tokens shifted by one, pads skipped)
* mlm         -- masked language modelling (BERT): 15% of the non-pad tokens are chosen; of
                 those 80% become the mask token, 10% a random token, 10% stay; cross-entropy
                 on the chosen positions only, through an auxiliary LM head
* autoencoder -- reconstruct the input of the trained block through a decoder
* denoising   -- the same from a masked input; the target is the clean input
* rbm         -- contrastive divergence (CD-k) on the trained block as an RBM

Helpers (auxiliary heads, decoders, the RBM's visible bias) exist only during their
stage; the engine builds them from ``stage.helper`` and drops them at the stage end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetrain.core.partbase import Part
from stagetrain.core.plan import Stage
from stagetrain.core.spec import DEFAULT_HEAD, ModelSpec, as_spec, part_from_dict
from stagetrain.models import Block, StagedModel
from stagetrain.nn import stagehelpers as helpers
from stagetrain.nn.auxheads import build_aux_head
from stagetrain.nn.objective_registry import find as find_objective
from stagetrain.nn.objective_registry import objective_type


class Decoder(nn.Module):
    """Maps a block's output back to its input; tied: uses the encoder's weight transposed."""

    def __init__(self, spec: helpers.Decoder):
        super().__init__()
        self.spec = spec
        self.tied = bool(spec.tied)
        if spec.type == "linear":
            self.weight = None if self.tied else nn.Parameter(torch.empty(spec.in_, spec.out))
            self.bias = nn.Parameter(torch.zeros(spec.in_))
            if self.weight is not None:
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        else:
            k = spec.kernel
            self.weight = None if self.tied else nn.Parameter(torch.empty(spec.out, spec.in_, k, k))
            self.bias = nn.Parameter(torch.zeros(spec.in_))
            if self.weight is not None:
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, code: torch.Tensor, block: Block) -> torch.Tensor:
        w = block.layer.weight if self.tied else self.weight
        if self.spec.type == "linear":
            return F.linear(code, w.t() if self.tied else w, self.bias)
        if self.spec.pool:
            code = F.interpolate(code, scale_factor=self.spec.pool, mode="nearest")
        k = self.spec.kernel
        return F.conv_transpose2d(code, w, self.bias, padding=k // 2)


class RBMVisible(nn.Module):
    """The visible bias of an RBM whose weight and hidden bias are the block's Linear."""

    def __init__(self, spec: helpers.RBMVisible):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(spec.in_))


class AuxLMHead(nn.Module):
    """Auxiliary per-position vocabulary head: LayerNorm -> Linear, [B, T, D] -> [B, T, V]."""

    def __init__(self, spec: helpers.LMHead | dict[str, Any]):
        super().__init__()
        self.spec = spec if isinstance(spec, helpers.LMHead) else helpers.from_dict({"kind": "lm_head", **spec})
        self.norm = nn.LayerNorm(self.spec.in_)
        self.layer = nn.Linear(self.spec.in_, self.spec.out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.norm(x))


BUILDERS: dict[type[helpers.Helper], Any] = {helpers.AuxHead: build_aux_head, helpers.Decoder: Decoder,
                                             helpers.RBMVisible: RBMVisible, helpers.LMHead: AuxLMHead}


def build_helper(spec: helpers.Helper | dict[str, Any] | None) -> nn.Module | None:
    """The module of a stage's helper (its record, or the record's plain dict), built from
    the typed record, which the modules keep as their ``spec``."""
    helper = helpers.as_helper(spec)
    return None if helper is None else BUILDERS[type(helper)](helper)


def free_energy(v: torch.Tensor, layer: nn.Linear, visible_bias: torch.Tensor) -> torch.Tensor:
    """F(v) = -v.b - sum_j softplus(W v + c)_j, per sample."""
    return -(v @ visible_bias) - F.softplus(F.linear(v, layer.weight, layer.bias)).sum(1)


def cd_k_negative(v0: torch.Tensor, layer: nn.Linear, visible_bias: torch.Tensor, k: int) -> torch.Tensor:
    """Run k steps of block Gibbs sampling from the data; returns the negative-phase visibles."""
    v = v0
    with torch.no_grad():
        for _ in range(k):
            h = torch.bernoulli(torch.sigmoid(F.linear(v, layer.weight, layer.bias)))
            v = torch.sigmoid(F.linear(h, layer.weight.t(), visible_bias))
    return v


def mask_noise(x: torch.Tensor, level: float) -> torch.Tensor:
    """Masking noise: each input unit is set to zero with probability ``level``."""
    if level <= 0:
        return x
    return x * (torch.rand_like(x) >= level).to(x.dtype)


def probe_batch(spec: ModelSpec | dict[str, Any], n: int, unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A made-up batch the model ``spec`` accepts (dry-run estimates): random inputs (token
    ids for a token stem; in [0, 1] when ``unit``) and labels (next tokens for an LM head)."""
    arch = as_spec(spec)
    vocab = getattr(arch.stem, "vocab_size", None)
    if vocab is not None:  # a token stem (model=transformer, hf)
        mask_id = arch.stem.mask_id
        x = torch.randint(1, vocab if mask_id is None else mask_id, (n, arch.in_shape[0]))  # real tokens only
        lm = head_objective(arch.head) == "lm"
        return x, (torch.roll(x, -1, 1) if lm else torch.zeros(n, dtype=torch.long))
    x = torch.randn(n, *arch.in_shape)
    return (x.sigmoid() if unit else x), torch.zeros(n, dtype=torch.long)


def head_objective(head: Part | dict[str, Any]) -> str | None:
    """What a head's per-position logits train: ``lm`` (model=transformer's ``lm_head``, or a
    head whose spec says ``"objective": "lm"``), ``mlm`` (one that says so), None: a classifier."""
    part = head if isinstance(head, Part) else part_from_dict(head, "head", DEFAULT_HEAD)
    return "lm" if part.TAG == "lm_head" else getattr(part, "objective", None)


def objective_of(stage: Stage, model: StagedModel) -> str:
    """The objective a stage really trains. A stage of an objective that follows its head
    (the record's ``follows_head``: supervised) trains what the head says it trains: through
    the model's own head, the head's objective (``head_objective``: ``lm`` for an LM head,
    what a model=hf head says); through an auxiliary LM head, ``lm``. The final
    evaluation's stage does not know the model's head."""
    if not objective_type(stage.objective).follows_head:
        return stage.objective
    own = head_objective(model.arch.head) if stage.uses_head else None
    if own:
        return own
    return "lm" if isinstance(stage.helper, helpers.LMHead) else stage.objective


MLM_RATE, MLM_SPLIT = 0.15, (0.8, 0.1)  # chosen share; of the chosen: to the mask token, to a random token
IGNORE = -100


def mlm_corrupt(x: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
                rate: float = MLM_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of token ids ``x`` [B, T] (0 = padding, never chosen; real tokens are
    1..mask_id-1): returns the corrupted input and the targets (the original token at the
    chosen positions, ``IGNORE`` elsewhere)."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    how = torch.rand(x.shape, generator=generator, device=x.device)
    rnd = torch.randint(1, mask_id, x.shape, generator=generator, device=x.device)
    chosen = (u < rate) & x.ne(0)
    to_mask, to_random = chosen & (how < MLM_SPLIT[0]), chosen & (how >= MLM_SPLIT[0]) & (how < sum(MLM_SPLIT))
    out = torch.where(to_mask, torch.full_like(x, mask_id), torch.where(to_random, rnd, x))
    return out, torch.where(chosen, x, torch.full_like(x, IGNORE))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not ``IGNORE`` (0 when none is)."""
    if not targets.ne(IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def _token_objective(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor,
                     y: torch.Tensor, first: int, training: bool) -> torch.Tensor:
    """lm / mlm losses that read the input tokens (``first`` = 0: ``h`` is the token ids)."""
    if objective_type(stage.objective).targets == "inputs":  # mlm: the masked input tokens
        mask_id = model.arch.stem.mask_id
        g = None if training else torch.Generator(h.device).manual_seed(0)  # the same masks every evaluation
        h, targets = mlm_corrupt(h, mask_id, g)
    else:  # lm on padded texts: position t predicts token t + 1; padding is no target
        nxt = torch.cat([h[:, 1:], torch.zeros_like(h[:, :1])], 1)
        targets = nxt.masked_fill(nxt.eq(0), IGNORE)
    z = model.features(h, first, stage.stop_block)
    return token_loss(helper(z) if helper is not None else model.head(z), targets)


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats: ``logits`` [B, T, V] at positions 0..T-1
    predict ``y`` [B, T], the tokens at positions 1..T (the window shifted by one)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def split_metrics(objective: str, loss: float, correct: float, n: int,
                  bytes_per_token: float | None = None) -> dict[str, float]:
    """A split's metrics from its sums: loss, and the objective's own (its record's
    ``metrics``): accuracy (supervised); the perplexity exp(loss) and bits per byte
    (loss / ln 2 / UTF-8 bytes per token) for lm, and for mlm (the pseudo-perplexity of
    the masked positions)."""
    out = {"loss": loss}
    kind = find_objective(objective)
    metrics = kind.metrics if kind is not None else ()
    if "acc" in metrics:
        out["acc"] = correct / max(n, 1)
    if "ppl" in metrics:
        out["ppl"] = math.exp(loss) if loss < 700 else math.inf
    if "bpb" in metrics and bytes_per_token:
        out["bpb"] = loss / math.log(2) / bytes_per_token
    return out


Loss = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # (stage, model, helper, h, y, first, training)


def _head_or_helper(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor,
                    first: int) -> torch.Tensor:
    z = model.features(h, first, stage.stop_block)
    return helper(z) if helper is not None else model.head(z)


def _supervised(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor, y: torch.Tensor,
                first: int, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = _head_or_helper(stage, model, helper, h, first)
    return F.cross_entropy(logits.float(), y), logits


def _lm(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor, y: torch.Tensor,
        first: int, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token loss: on corpus windows (``y``: the next tokens), or on padded texts when
    the helper's targets are the input tokens; no per-sample accuracy to report."""
    if stage.helper is not None and stage.helper.reads_tokens:
        return _token_objective(stage, model, helper, h, y, first, training), None
    return lm_loss(_head_or_helper(stage, model, helper, h, first), y), None


def _mlm(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor, y: torch.Tensor,
         first: int, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    return _token_objective(stage, model, helper, h, y, first, training), None


def _reconstruction(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor,
                    y: torch.Tensor, first: int, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """autoencoder / denoising: the decoder reconstructs the trained block's (clean) input."""
    block = model.blocks[model.block_names[stage.stop_block - 1]]
    if block.spec.TAG == "linear":  # a linear block reads its input flat (the typed part, core/parts.py)
        h = h.flatten(1)
    noisy = mask_noise(h, stage.objective_args.noise) if objective_type(stage.objective).noisy and training else h
    recon = helper(block(noisy), block)
    return F.mse_loss(recon.float(), h.float()), None


def _rbm(stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor, y: torch.Tensor,
         first: int, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CD-k on the trained block; evaluation reports the mean-field reconstruction error,
    which is comparable."""
    block = model.blocks[model.block_names[stage.stop_block - 1]]
    v0 = h.flatten(1)
    if not training:
        hid = torch.sigmoid(F.linear(v0, block.layer.weight, block.layer.bias))
        recon = torch.sigmoid(F.linear(hid, block.layer.weight.t(), helper.bias))
        return F.mse_loss(recon, v0), None
    vk = cd_k_negative(v0, block.layer, helper.bias, stage.objective_args.cd_k)
    return (free_energy(v0, block.layer, helper.bias) - free_energy(vk, block.layer, helper.bias)).mean(), None


# Each registered objective's loss (objective_registry.OBJECTIVE_TYPES has the same names).
LOSSES: dict[str, Loss] = {"supervised": _supervised, "lm": _lm, "mlm": _mlm, "autoencoder": _reconstruction,
                           "denoising": _reconstruction, "rbm": _rbm}


def stage_loss(
    stage: Stage, model: StagedModel, helper: nn.Module | None, h: torch.Tensor,
    y: torch.Tensor, first: int, training: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss of one batch and (for supervised stages) the logits, by the objective the stage
    really trains (``objective_of``). ``h`` is the input of block ``first`` (the output of
    the frozen prefix, maybe cached)."""
    name = objective_of(stage, model)
    if name not in LOSSES:
        raise ValueError(f"unknown objective {name!r}")
    return LOSSES[name](stage, model, helper, h, y, first, training)

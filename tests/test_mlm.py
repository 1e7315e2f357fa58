"""The ``mlm`` objective: BERT masking statistics (15% of the real tokens, 80/10/10, never
padding), the loss only on the chosen positions, a fixed mask at evaluation, and the mask
token added to the model's vocabulary (recorded in its spec)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stagetrain.core.plan import Stage
from stagetrain.families import transformer as family
from stagetrain.models import StagedModel
from stagetrain.nn.objectives import (
    IGNORE,
    AuxLMHead,
    mlm_corrupt,
    probe_batch,
    stage_loss,
    token_loss,
)

VOCAB = 257  # the byte tokenizer: 0 = padding, 1..256 the bytes; the mask token gets id 257


def _padded(n=400, t=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (n, t), generator=g)
    lengths = torch.randint(10, t + 1, (n,), generator=g)
    return x.masked_fill(torch.arange(t)[None] >= lengths[:, None], 0)


def test_masking_follows_the_15_percent_80_10_10_rule_and_never_touches_padding():
    x = _padded()
    out, targets = mlm_corrupt(x, VOCAB, torch.Generator().manual_seed(1))
    chosen = targets.ne(IGNORE)
    real = int(x.ne(0).sum())
    assert not (chosen & x.eq(0)).any() and torch.equal(out[x.eq(0)], x[x.eq(0)])  # padding stays padding
    assert torch.equal(targets[chosen], x[chosen])  # the target is the original token
    assert not (~chosen & out.ne(x)).any()  # only chosen positions change
    share = int(chosen.sum()) / real
    assert share == pytest.approx(0.15, abs=0.01)  # ~15,000 real tokens: 3 sigma is under 0.01
    masked = out[chosen].eq(VOCAB).float().mean()
    same = out[chosen].eq(x[chosen]).float().mean()  # kept, or (1 in 256) replaced by itself
    assert masked == pytest.approx(0.8, abs=0.03) and same == pytest.approx(0.1, abs=0.03)
    randomised = out[chosen & out.ne(VOCAB) & out.ne(x)]
    assert randomised.min() >= 1 and randomised.max() < VOCAB  # random tokens are real tokens, never mask/pad
    again, _ = mlm_corrupt(x, VOCAB, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # a seeded generator: the evaluation masks are the same every time


def test_loss_counts_only_the_masked_positions():
    logits = torch.randn(2, 6, 9)
    targets = torch.full((2, 6), IGNORE)
    targets[0, 1], targets[1, 4] = 3, 7
    expected = (F.cross_entropy(logits[0, 1:2], torch.tensor([3])) + F.cross_entropy(logits[1, 4:5], torch.tensor([7]))) / 2
    assert token_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[targets.eq(IGNORE)] += 5 * torch.randn_like(changed[targets.eq(IGNORE)])
    assert token_loss(changed, targets).item() == pytest.approx(expected.item(), rel=1e-6)  # others do not count
    none = token_loss(logits.requires_grad_(), torch.full((2, 6), IGNORE))
    assert none.item() == 0.0 and torch.isfinite(none)  # a batch with nothing chosen: zero, not NaN


def _classifier_with_mask():
    m = family.Config(d_model=16, n_heads=2, n_layers=2, stem="tokens", head="cls", vocab_size=VOCAB, max_len=50)
    torch.manual_seed(0)
    return StagedModel(family.with_mask_token(family.spec(m, (50,), 4)))


def test_the_mask_token_extends_the_vocabulary_and_the_model_learns_masked_tokens():
    model = _classifier_with_mask()
    assert model.spec["stem"]["vocab_size"] == VOCAB + 1 and model.spec["stem"]["mask_id"] == VOCAB
    head = AuxLMHead({"in": 16, "out": VOCAB})
    stage = Stage("pretrain-mlm", 1, ["stem", "block1", "block2", "helper"], objective="mlm",
                  helper={"kind": "lm_head", "in": 16, "out": VOCAB, "targets": "tokens"})
    x = _padded(64, 50, seed=3) % 4 + 1  # four distinct tokens: guessable from the unmasked neighbours
    x[:, 1::2] = x[:, ::2]  # pairs: a masked token equals its neighbour
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.01)
    first = None
    for _ in range(60):
        loss, _ = stage_loss(stage, model, head, x, torch.zeros(64, dtype=torch.long), 0, True)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ev1, _ = stage_loss(stage, model.eval(), head.eval(), x, torch.zeros(64, dtype=torch.long), 0, False)
    ev2, _ = stage_loss(stage, model, head, x, torch.zeros(64, dtype=torch.long), 0, False)
    assert ev1.item() == ev2.item()  # evaluation masks are fixed: the metric is comparable between epochs
    assert first > 5 and ev1.item() < 1.1  # from ~ln(257) to below ln(4): it reads the neighbour


def test_lm_pretraining_on_padded_texts_predicts_the_next_real_token_only():
    m = family.Config(d_model=16, n_heads=2, n_layers=1, stem="tokens", head="cls", vocab_size=VOCAB, max_len=8,
                      causal=True)
    torch.manual_seed(0)
    model = StagedModel(family.spec(m, (8,), 3)).double().eval()
    head = AuxLMHead({"in": 16, "out": VOCAB}).double().eval()
    stage = Stage("pretrain-lm", 1, ["stem", "block1", "helper"], objective="lm",
                  helper={"kind": "lm_head", "in": 16, "out": VOCAB, "targets": "tokens"})
    x = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3, 2]])
    loss, _ = stage_loss(stage, model, head, x, torch.zeros(2, dtype=torch.long), 0, False)
    logits = head(model.features(x, 0, None))
    pairs = [(0, 0, 6), (0, 1, 7)] + [(1, t, int(x[1, t + 1])) for t in range(7)]  # no target is padding
    expected = sum(F.cross_entropy(logits[b, t:t + 1], torch.tensor([y])) for b, t, y in pairs) / len(pairs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the loss is computed in fp32


def test_probe_batches_of_a_model_with_a_mask_token_hold_real_tokens_only():
    """The dry run's and the FLOP counter's made-up batch: the mask id is no input token and no
    target (an LM head over the data's vocabulary has no class for it)."""
    spec = _classifier_with_mask().spec
    x, _ = probe_batch(spec, 400)  # 20,000 tokens: the mask id would be drawn ~78 times
    assert x.min() >= 1 and x.max() < spec["stem"]["mask_id"]

"""The memory preflight per rank: parameters, gradients and Adam state divided over the ranks
with ``device.shard=fsdp`` under torchrun (``WORLD_SIZE``), activations and data not; a run
one rank of which would not fit is refused with the numbers (per rank, the ranks of this host
together, available).

torchrun's environment (WORLD_SIZE, LOCAL_WORLD_SIZE) is the input here: it is set with
monkeypatch, nothing is launched. Models are built on the meta device (nothing allocated).
"""

from __future__ import annotations

import math

import pytest
from conftest import make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.datasets import dataset_meta
from stagetrain.models import StagedModel
from stagetrain.runs import preflight
from stagetrain.runs.config import validate
from stagetrain.runs.dryrun import dry_run
from stagetrain.runs.parts import initial_spec, run_specs

# (overrides, every parameter's shape written out by hand)
MLP = (["model.widths=[33,17]"],
       [(33, 64), (33,), (17, 33), (17,), (10, 17), (10,)])
# d_model 6, 2 heads, MLP hidden 9 (odd: FSDP pads dim 0), 4 patch tokens of 16 pixels, 10 classes
TRANSFORMER = (["model=transformer", "model.d_model=6", "model.n_heads=2", "model.n_layers=1",
                "model.mlp_ratio=1.5"],
               [(1, 4, 6), (6, 16), (6,),  # stem: positions, patch projection
                (6,), (6,), (18, 6), (18,), (6, 6), (6,), (6,), (6,), (9, 6), (9,), (6, 9), (6,),  # layer
                (6,), (6,), (10, 6), (10,)])  # head: norm, classifier


def _hand(shapes: list[tuple[int, ...]], ranks: int) -> int:
    """Elements one rank holds: dim 0 split in ``ranks`` equal padded slices (FSDP2's rule)."""
    return sum(math.ceil(s[0] / ranks) * math.prod(s[1:]) for s in shapes)


def _settings(overrides: list[str], shard: str):
    return validate(make_cfg("strategy=scratch", f"device.shard={shard}", *overrides))


def _memory(settings, batch: int = 32) -> tuple[preflight.Memory, dict]:
    shape, classes, _, _ = dataset_meta(settings.dataset)
    spec = initial_spec(settings, shape, classes)
    return preflight.meta_memory(spec, batch, 0, preflight.shard_count(settings.device)), spec


@pytest.mark.parametrize("family", [MLP, TRANSFORMER], ids=["mlp", "transformer"])
def test_per_rank_bytes_equal_a_hand_count_at_world_size_2(family, monkeypatch):
    overrides, shapes = family
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    whole, spec = _memory(_settings(overrides, "none"))
    sharded, _ = _memory(_settings(overrides, "fsdp"))
    built = [tuple(p.shape) for p in StagedModel(spec).parameters()]
    assert sorted(built) == sorted(shapes), "the hand-written shapes are the model's"

    assert whole.shards == 1 and sharded.shards == 2
    assert whole.params == sharded.params == sum(math.prod(s) for s in shapes)
    # DDP: every rank holds the whole model; 4 bytes each for weight and gradient, 8 for Adam
    assert (whole.weights, whole.gradients, whole.optimizer, whole.gathered) == \
        (4 * whole.params, 4 * whole.params, 8 * whole.params, 0)
    # FSDP over 2 ranks: the padded half of every parameter, plus the whole model gathered on
    # every rank to evaluate (a plain copy filled one parameter at a time: engine/sharding.gathered)
    half = _hand(shapes, 2)
    assert half < whole.params and half >= whole.params / 2
    assert (sharded.weights, sharded.gradients, sharded.optimizer) == (4 * half, 4 * half, 8 * half)
    largest = max(math.prod(s) for s in shapes)
    assert sharded.gathered == 4 * (whole.params + largest)
    # activations and data are not divided
    assert sharded.activations == whole.activations == preflight.activation_elements(spec) * 32 * 12
    assert sharded.local_ranks == whole.local_ranks == 2
    assert sharded.device == 16 * half + 4 * (whole.params + largest) + whole.activations


def test_without_torchrun_fsdp_divides_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone, _ = _memory(_settings(MLP[0], "fsdp"))
    assert alone.shards == 1 and alone.weights == 4 * alone.params and alone.gathered == 0


def test_dry_run_shows_memory_per_rank_with_sharding(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = _settings(MLP[0], "fsdp")
    rows = dry_run(settings)["estimates"]
    half = _hand(MLP[1], 2)
    act = preflight.activation_elements(initial_spec(settings, *dataset_meta(settings.dataset)[:2]))
    gathered = 4 * (sum(math.prod(s) for s in MLP[1]) + max(math.prod(s) for s in MLP[1]))
    expected = 16 * half + gathered + act * int(settings.train.batch_size) * 12
    assert [(r["memory_per_rank"], r["shards"]) for r in rows] == [(expected, 2)]
    out = capsys.readouterr().out
    assert "memory/rank" in out and "sharded over 2 ranks (device.shard=fsdp)" in out


def _big_mlp() -> tuple[list[str], int]:
    """An MLP whose weights, gradients and Adam state are 1.2 times this host's available memory."""
    have, _ = preflight.available_bytes(None)
    if have is None:
        pytest.skip("this host reports no available memory (no /proc/meminfo, no cgroup limit)")
    width = math.isqrt(int(1.2 * have / 16 / 2))  # two width x width layers dominate
    return [f"model.widths=[{width},{width},{width}]"], width


def test_one_rank_that_would_not_fit_is_refused_with_the_numbers(monkeypatch):
    overrides, width = _big_mlp()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    settings = _settings(overrides, "fsdp")
    with pytest.raises(StagetrainError) as e:
        preflight.check_run(settings, None, run_specs)
    text = str(e.value)
    for part in ("This run (model=mlp, dataset=digits) would need about", "per rank",
                 "the 2 ranks on this host need", "together, but the available host memory is",
                 "sharded over 2 ranks, device.shard=fsdp", "gathered to evaluate", "activations of a batch of", "more ranks"):
        assert part in text, text
    params = 64 * width + width + 2 * (width * width + width) + 10 * width + 10
    assert f"{params:,} parameters" in text, text


def test_sharding_over_more_ranks_makes_the_same_run_fit(monkeypatch):
    overrides, _ = _big_mlp()
    monkeypatch.setenv("WORLD_SIZE", "16")  # 16 ranks, one on this host
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    # per rank: 1/16 of the state (0.075 of the memory) and the model gathered to evaluate (0.6)
    preflight.check_run(_settings(overrides, "fsdp"), None, run_specs)
    with pytest.raises(StagetrainError, match="or device.shard=fsdp under torchrun"):
        preflight.check_run(_settings(overrides, "none"), None, run_specs)  # DDP: the whole model per rank

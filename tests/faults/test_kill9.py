"""kill -9 anywhere, then resume=auto until done: every run completes, bit-identical.

Each strategy (scratch; layerwise with cache=on; grow across its growth steps; finetune
with gradual unfreezing after in-run pretraining) is SIGKILLed 6 to 8 times: inside
checkpoint writes (temp file half written, complete but not renamed, between the two
renames), at a stage end and the next stage start, right after a growth, at seeded random
steps and at random wall-clock moments. See harness.py and victim.py.
"""

from __future__ import annotations

import pytest

from .harness import COMMON, EVERY, SCENARIOS, run_scenario

pytestmark = pytest.mark.full  # a kill -9 campaign: `pytest --full`

RANDOM_KILLS = 2  # per strategy, on top of the required moments (harness.required_plans)
TOTAL: dict[str, int] = {}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_kill9_at_random_moments_then_resume_gives_identical_run(name, shm_path):
    r = run_scenario(name, [*COMMON, *SCENARIOS[name]], shm_path, kills=RANDOM_KILLS, seed=0)
    logs = shm_path / "logs"
    assert r.completed, f"{name} did not complete; see {logs}"
    assert r.kills >= 5, f"only {r.kills} of {r.planned} planned kills fired: {r.kinds}"
    assert {"write:partial", "write:tmp", "write:between", "event:stage_end"} <= set(r.kinds), r.kinds
    if name == "grow":
        assert "event:growth" in r.kinds, r.kinds
    assert r.weights_identical, f"{name}: final weights differ from the uninterrupted run; see {logs}"
    assert r.epochs_exactly_once
    assert r.metrics_identical, "metrics.jsonl differs from the uninterrupted run's (timing fields aside)"
    assert r.lost_steps and max(r.lost_steps) <= EVERY, f"lost work per kill {r.lost_steps} > {EVERY} steps"
    assert not r.temp_files_left, r.temp_files_left
    TOTAL[name] = r.kills


def test_ci_runs_at_least_20_kills():
    """Runs after the four scenarios (file order); fails if any of them did not run."""
    assert set(TOTAL) == set(SCENARIOS), f"scenarios that ran: {sorted(TOTAL)}"
    assert sum(TOTAL.values()) >= 20, TOTAL
    print(f"kills survived: {sum(TOTAL.values())} ({TOTAL})")

"""Resume: pick the newest readable checkpoint of a run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stagetrain.checkpoint.io import load
from stagetrain.checkpoint.schema import describe
from stagetrain.checkpoint.sharded import folder_of, load_meta, verify
from stagetrain.core.errors import StagetrainError
from stagetrain.core.trust import UntrustedCode
from stagetrain.nn.specfile import check_spec

log = logging.getLogger("stagetrain")


def _first_readable(paths: list[Path], read: Any) -> dict[str, Any] | None:
    for path in paths:
        try:
            state = read(path)
            weights = state["model"] if "sharded" not in state else None  # shards: DCP checks each tensor's shape
            check_spec(state["arch"], f"checkpoint {path}", weights=weights)  # data until checked
        except UntrustedCode:
            raise  # code the user has not vouched for: refused, not a damaged file to fall back from
        except StagetrainError as e:
            log.warning("%s Falling back to the previous checkpoint.", e)
            continue
        state["path"] = str(path)
        return state
    return None


def _order(state: dict[str, Any]) -> tuple[int, int, int, int]:
    p = state["position"]
    return (p["global_step"], p["stage"], p["epoch"], p["batch"])


def latest_state(rundir: Any) -> dict[str, Any] | None:
    """Newest readable checkpoint (last, its predecessor, stage ends; the sharded ``last.dcp``
    folders of an FSDP stage); a bad one is reported and the previous good one used. None:
    start the run again in the same directory."""
    candidates = rundir.resume_candidates()
    folders = [f for f in (folder_of(Path(rundir.last)), folder_of(Path(rundir.last_prev))) if f.is_dir()]
    plain = _first_readable(candidates, lambda path: load(path))  # io.load: through the gate
    sharded = _first_readable(folders, lambda f: (verify(f), load_meta(f))[1]) if folders else None
    if plain is not None or sharded is not None:  # the later of the two (a stage end follows its last shards)
        state = max((s for s in (plain, sharded) if s is not None), key=_order)
        log.info("Resuming from %s (%s)", state.pop("path"), describe(state))
        return state
    if candidates or folders:
        log.warning("No checkpoint in %s could be read (see above); the run starts again from the "
                    "beginning in the same directory.", rundir.checkpoints)
    else:
        log.info("%s holds no checkpoint yet; the run starts from the beginning.", rundir.path)
    return None

"""Resume: pick the newest readable checkpoint of a run directory."""

from __future__ import annotations

import logging
from typing import Any

from stagetrain.checkpoint.io import load
from stagetrain.checkpoint.schema import describe
from stagetrain.errors import StagetrainError
from stagetrain.preflight import check_spec
from stagetrain.trust import UntrustedCode

log = logging.getLogger("stagetrain")


def latest_state(rundir: Any) -> dict[str, Any] | None:
    """Newest readable checkpoint (last, its predecessor, stage ends); a bad one is reported
    and the previous good one used. None: start the run again in the same directory."""
    candidates = rundir.resume_candidates()
    for path in candidates:
        try:
            state = load(path)
            check_spec(state["arch"], f"checkpoint {path}", weights=state["model"])  # data until checked
        except UntrustedCode:
            raise  # code the user has not vouched for: refused, not a damaged file to fall back from
        except StagetrainError as e:
            log.warning("%s Falling back to the previous checkpoint.", e)
            continue
        log.info("Resuming from %s (%s)", path, describe(state))
        return state
    if candidates:
        log.warning("No checkpoint in %s could be read (see above); the run starts again from the "
                    "beginning in the same directory.", rundir.checkpoints)
    else:
        log.info("%s holds no checkpoint yet; the run starts from the beginning.", rundir.path)
    return None

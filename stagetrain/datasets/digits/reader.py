"""``dataset=digits``: read from the CSV inside scikit-learn's package without importing it
(the same values as ``sklearn.datasets.load_digits``), split by the stored indices."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.data.bundle import Split


def load(ds: Any, seed: int) -> tuple[Split, Split, float]:
    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise StagetrainError("dataset=digits reads scikit-learn's bundled digits; install it: pip install scikit-learn.")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    x = torch.tensor(table[:, :-1].reshape(-1, 1, 8, 8), dtype=torch.uint8)  # N x 1 x 8 x 8, values 0..16
    y = torch.tensor(table[:, -1], dtype=torch.long)
    # digits has no official test split: a fixed, stratified 20% is held out.
    split = json.loads((Path(__file__).parent / "split.json").read_text())  # stored: no scikit-learn import
    tr, te = torch.tensor(split["train"]), torch.tensor(split["test"])
    return Split(x[tr], y[tr]), Split(x[te], y[te]), 16.0

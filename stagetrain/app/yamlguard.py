"""YAML files a user passes (``--config-dir``, ``--config-name``) are checked before Hydra
reads them: a file over ``MAX_YAML_BYTES``, or one whose aliases would expand to more than
``MAX_EXPANDED_NODES`` values (a "billion laughs" alias bomb, which would hang the
composition), is refused naming the file. Aliases themselves are fine; only their
expansion is counted, on the node graph PyYAML composes without expanding anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError

MAX_YAML_BYTES = userfile.LIMITS["config"]  # a config file is a few hundred bytes
MAX_EXPANDED_NODES = 100_000


def _expanded_size(node: object, memo: dict[int, int], depth: int = 0) -> int:
    """Values ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    import yaml

    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_EXPANDED_NODES + 1  # a cycle (a recursive alias) expands without end
    if depth > 100:
        return memo[key]
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo, depth + 1) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, depth + 1) + _expanded_size(v, memo, depth + 1)
                       for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_EXPANDED_NODES + 1)
    return memo[key]


def check_yaml_file(path: str | os.PathLike) -> None:
    """Refuse a YAML config file that is too large or whose aliases expand too far."""
    import yaml

    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return  # missing: Hydra says what is wrong with it
    if stat.S_ISDIR(st.st_mode):
        return
    if st.st_size > MAX_YAML_BYTES:
        raise StagetrainError(f"The config file {path} is {st.st_size:,} bytes, more than a config may have "
                              f"({MAX_YAML_BYTES:,}); it is not a stagetrain config.")
    text = userfile.read_bytes(path, "the config file", "config").decode("utf-8", errors="replace")  # a FIFO: refused
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # a syntax error: explained where the config is composed
    if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
        raise StagetrainError(f"The config file {path} uses YAML aliases (*name) that expand to more than "
                              f"{MAX_EXPANDED_NODES:,} values; it is refused (an alias bomb would hang the run). "
                              "Write the values out, or use fewer nested aliases.")

"""Defaults once (issue 25): an option's default lives in its dataclass; the YAML and the
READMEs may repeat it only where this test proves the copy equal.

- Every value in conf/config.yaml and conf/{strategy,model,dataset,device}/*.yaml equals the
  default of the schema its ``defaults:`` line names, unless its line ends in a ``# choice:``
  comment (a value the option chooses on purpose; the marker on a value equal to the default is
  refused, so a marker cannot outlive its reason). ``name`` is the option's selector: it must
  equal the file's name.
- Every ``| option | default | meaning |`` table in README.md and stagetrain/strategies/*/README.md
  states the defaults the composed config of its owner gets (a strategy's README: that strategy;
  README.md: the ``model=<name>`` / ``strategy=<name>`` heading above the table), and lists every
  option of that owner. A default cell holds one value per option (comma separated) or one value
  for all; ``null: <what it means>`` states a null default, ``2 GiB`` a byte count.
- Prose of the form ``strategy.freeze_blocks`` (1) / (default 2 GiB) in those READMEs: a numeric
  value in the parentheses must be a default some option of that name has (an option name shared
  by several strategies or datasets is checked against all of them: not exact there). A value that
  is no number (``(3, or 1)``, ``(stratified)``) is not read.
- README.md's ``hydra.launcher.*`` table states the SLURM preset's values (conf/hydra/launcher/slurm.yaml
  as composed; it lists only the keys users set, so it is not checked for completeness).
- Not checked: YAML comments that restate a default in words (``null: 5``), and tables of another
  form (finetune's mode table, README.md's ``model=`` table) whose defaults sit in prose.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

import stagetrain.app.cli  # noqa: F401  (registers the resolvers and schemas)
from stagetrain.core.schema import RunConfig
from stagetrain.runs.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("strategy", "model", "dataset", "device")
YAMLS = [CONF / "config.yaml", *(f for g in GROUPS for f in sorted((CONF / g).glob("*.yaml")))]
READMES = [ROOT / "README.md", *sorted((ROOT / "stagetrain" / "strategies").glob("*/README.md"))]
CHOICE = re.compile(r"#\s*choice:")
PROSE = re.compile(r"`(strategy|model|dataset|device|train|optim|sched|checkpoint|logger)\.([\w.]+)` "
                   r"\((?:default )?([^)]+)\)")


def _same(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def marked_choices(text: str) -> set[str]:
    """Dotted keys of the lines of a block-style YAML text that end in a ``# choice`` comment."""
    keys, stack = set(), []
    for line in text.splitlines():
        m = re.match(r"^(\s*)([A-Za-z_]\w*):(.*)$", line)
        if not m:
            continue
        while stack and stack[-1][0] >= len(m[1]):
            stack.pop()
        stack.append((len(m[1]), m[2]))
        if CHOICE.search(m[3]):
            keys.add(".".join(k for _, k in stack))
    return keys


def schema_of(path: Path, values: DictConfig) -> DictConfig:
    """The schema node a YAML file's ``defaults:`` line names (conf/config.yaml: RunConfig)."""
    if path == CONF / "config.yaml":
        return OmegaConf.structured(RunConfig)
    register_configs()
    first = str(values.defaults[0])
    assert first.startswith("/schema/") and first.endswith("@_here_"), f"{path}: defaults begins with {first}"
    return ConfigStore.instance().load(first[1:-len("@_here_")] + ".yaml").node


def mismatches(values: DictConfig, schema: DictConfig, choices: set[str], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in list(schema.keys()):
            out.append(f"{path}: not an option of {OmegaConf.get_type(schema).__name__}")
            continue
        node = schema._get_node(key)
        if isinstance(value, DictConfig) and isinstance(node, DictConfig) and not node._is_none():
            out += mismatches(value, node, choices, f"{path}.")
            continue
        have = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
        want = OmegaConf.to_container(node) if isinstance(node, DictConfig | ListConfig) and not node._is_none() \
            else node._value()
        if path in choices and _same(have, want):
            out.append(f"{path}: marked as a choice but equal to the default {want!r}: drop the marker")
        elif path not in choices and not _same(have, want):
            out.append(f"{path}: {have!r} here, {want!r} in the dataclass (mark it '# choice: <why>' if on purpose)")
    return out


def yaml_drift(path: Path, text: str) -> list[str]:
    values = OmegaConf.create(text)
    schema = schema_of(path, values)
    values.pop("defaults", None)
    values.pop("hydra", None)
    out = []
    if path.parent.name in GROUPS and values.pop("name", None) != path.stem:
        out.append(f"name: must be the option's own name, {path.stem}")
    return out + mismatches(values, schema, marked_choices(text))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONF)))
def test_every_yaml_value_is_its_dataclass_default_or_a_marked_choice(path):
    drift = yaml_drift(path, path.read_text())
    assert not drift, "\n".join(drift)


def test_a_changed_default_is_caught_and_a_marked_choice_passes():
    path = CONF / "strategy" / "grow.yaml"
    text = path.read_text()
    assert re.search(r"^epochs_per_stage: 5 ", text, re.M)
    drifted = re.sub(r"^epochs_per_stage: 5 ", "epochs_per_stage: 6 ", text, flags=re.M)
    assert yaml_drift(path, drifted) == ["epochs_per_stage: 6 here, 5 in the dataclass (mark it "
                                         "'# choice: <why>' if on purpose)"]
    chosen = re.sub(r"^(epochs_per_stage: 6 .*)$", r"\1  # choice: longer stages", drifted, flags=re.M)
    assert yaml_drift(path, chosen) == []
    stale = re.sub(r"^(epochs_per_stage: 5 .*)$", r"\1  # choice: none left", text, flags=re.M)
    assert "marked as a choice" in yaml_drift(path, stale)[0]
    lw = CONF / "strategy" / "layerwise.yaml"
    assert yaml_drift(lw, lw.read_text().replace("  min_delta: 0.005", "  min_delta: 0.01"))[0].startswith(
        "auto.min_delta: 0.01 here")
    assert yaml_drift(CONF / "device" / "cpu.yaml", "defaults:\n  - /schema/device/device@_here_\nname: cuda\n")


# --- README option tables -------------------------------------------------------------------

def _split_top(cell: str) -> list[str]:
    """``cell`` split at commas outside backticks, parentheses and brackets."""
    parts, depth, tick, cur = [], 0, False, ""
    for ch in cell:
        tick ^= ch == "`"
        depth += (ch in "([") - (ch in ")]") if not tick else 0
        if ch == "," and depth == 0 and not tick:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*parts, cur.strip()]


def _expand(cell: str) -> list[str]:
    """The option names a key cell lists: `strategy.auto.{a,b}` is two."""
    out = []
    for name in re.findall(r"`([^`]+)`", cell):
        m = re.fullmatch(r"(.*)\{(.*)\}", name)
        out += [m[1] + part for part in m[2].split(",")] if m else [name]
    return out


def parse_default(text: str):
    """A default cell's value: ``null: ...`` is None, ``2 GiB`` bytes, else a YAML literal."""
    text = text.strip()
    if re.match(r"`?null`?\b", text):
        return None
    if m := re.fullmatch(r"([\d.]+) GiB", text):
        return int(float(m[1]) * 2**30)
    value = yaml.safe_load(text.replace("`", ""))
    try:  # YAML 1.1 reads 3e-4 (no dot) as a string
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def option_tables(path: Path):
    """(group, option, [(option names, default cell)]) of each option table in ``path``."""
    lines, owner, tables = path.read_text().splitlines(), None, []
    if path.parent.parent.name == "strategies":
        owner = ("strategy", path.parent.name)
    for i, line in enumerate(lines):
        if line.startswith("#") and (m := re.search(r"`(model|strategy|dataset|device)=(\w+)`", line)):
            owner = (m[1], m[2])
        if re.match(r"\|\s*option\s*\|\s*default\s*\|", line):
            assert owner, f"{path.name}:{i + 1}: an option table under no `model=`/`strategy=` heading"
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
                rows.append((_expand(cells[0]), cells[1]))
            tables.append((*owner, rows))
    return tables


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@functools.cache
def group_defaults() -> dict[tuple[str, str], dict]:
    """(group, option) -> the composed config's section of that group, as dotted leaves."""
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        return {(g, f.stem): _leaves(OmegaConf.to_container(compose("config", overrides=[f"{g}={f.stem}"])[g]))
                for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))}


def table_drift(group: str, option: str, rows: list) -> list[str]:
    defaults = group_defaults()[(group, option)]
    out, seen = [], set()
    for names, cell in rows:
        keys = [n.removeprefix(f"{group}.") for n in names]
        values = _split_top(cell)
        if len(values) not in (1, len(keys)):
            out.append(f"{names}: {len(values)} defaults for {len(keys)} options: cannot pair them")
            continue
        for key, text in zip(keys, values * len(keys) if len(values) == 1 else values, strict=True):
            seen.add(key)
            if key not in defaults:
                out.append(f"{group}.{key}: not an option of {group}={option}")
            elif not _same(parse_default(text), defaults[key]):
                out.append(f"{group}.{key}: the table says {text!r}, the default is {defaults[key]!r}")
    return out + [f"{group}.{k}: an option of {group}={option} the table does not list"
                  for k in defaults if k not in seen and k != "name"]


def test_the_readmes_have_option_tables_to_check():
    found = {(p.name if p.name != "README.md" or p.parent == ROOT else p.parent.name, g, o)
             for p in READMES for g, o, _ in option_tables(p)}
    assert {("README.md", "model", "resnet"), ("grow", "strategy", "grow"),
            ("layerwise", "strategy", "layerwise"), ("scratch", "strategy", "scratch"),
            ("finetune", "strategy", "finetune")} <= found


@pytest.mark.parametrize("path", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_option_tables_state_the_dataclass_defaults(path):
    drift = [f"{path.relative_to(ROOT)} {g}={o}: {d}" for g, o, rows in option_tables(path) for d in table_drift(g, o, rows)]
    assert not drift, "\n".join(drift)


def test_a_wrong_table_default_is_caught():
    rows = [(["`strategy.epochs_per_stage`", "`strategy.final_epochs`"], "5, null: `train.epochs`")]
    rows = [(_expand(" ".join(n)), c) for n, c in rows]
    assert [d for d in table_drift("strategy", "grow", rows) if "does not list" not in d] == []
    rows[0] = (rows[0][0], "6, `train.epochs`")
    assert [d for d in table_drift("strategy", "grow", rows) if "does not list" not in d] == [
        "strategy.epochs_per_stage: the table says '6', the default is 5",
        "strategy.final_epochs: the table says '`train.epochs`', the default is None"]


def _all_defaults() -> dict[str, list]:
    """Every option's default, by dotted name, over every option of every group."""
    out: dict[str, list] = {}
    for (group, _), leaves in group_defaults().items():
        for k, v in leaves.items():
            out.setdefault(f"{group}.{k}", []).append(v)
    run = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    for section in ("train", "optim", "sched", "checkpoint", "logger"):
        out.update({f"{section}.{k}": [v] for k, v in _leaves(run[section]).items()})
    return out


def test_defaults_named_in_readme_prose_are_the_dataclass_defaults():
    defaults, checked, drift = _all_defaults(), 0, []
    for path in READMES:
        for m in PROSE.finditer(path.read_text()):
            try:
                value = parse_default(m[3])
            except yaml.YAMLError:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            checked += 1
            key = f"{m[1]}.{m[2]}"
            if not any(_same(float(value), float(d)) for d in defaults.get(key, []) if isinstance(d, int | float)):
                drift.append(f"{path.relative_to(ROOT)}: {m[0]} but {key} defaults to {defaults.get(key, 'nothing: no such option')}")
    assert not drift, "\n".join(drift)
    assert checked >= 10


def test_readme_slurm_launcher_table_states_the_preset_defaults():
    """README.md's ``hydra.launcher.*`` table against conf/hydra/launcher/slurm.yaml as composed
    (keys the preset leaves out come from the submitit plugin's own defaults)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the SLURM launcher extra is not installed")
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\| key \(`hydra\.launcher\.\*`\) \| default \|", line))
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        launcher = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    drift, rows = [], lines[start + 2:]
    for row in rows[:next(i for i, r in enumerate(rows) if not r.startswith("|"))]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        keys, values = _expand(cells[0]), _split_top(cells[1])
        for key, text in zip(keys, values if len(values) == len(keys) else values * len(keys), strict=True):
            if not _same(parse_default(text), launcher[key]):
                drift.append(f"hydra.launcher.{key}: the table says {text!r}, the preset {launcher[key]!r}")
    assert not drift, "\n".join(drift)
    assert len(rows) >= 9

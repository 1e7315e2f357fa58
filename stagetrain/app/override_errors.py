"""Explaining a refused command line in one paragraph: an override Hydra's grammar cannot
read, a target the shell split, an unknown key or group option (with the nearest valid
one), a wrong type, a broken config file. Used by ``overrides.check_command_line``."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from stagetrain.core.errors import StagetrainError, did_you_mean

TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false",
              "String": "a string"}


QUOTE_HINT = ("quote it twice, Hydra's quotes inside the shell's: \"{key}='{value}'\" (the shell "
              "removes the outer quotes, Hydra the inner ones)")


def check_grammar(overrides: list[str]) -> None:
    """An override Hydra's grammar cannot read (``model.widths=[64``, ``lr=1e-3,``, a value
    with ``=`` or ``>`` unquoted): which one, Hydra's reason, and how to write it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for line in overrides:
        try:
            parser.parse_overrides([line])
        except OverrideParseException as e:
            key, eq, value = line.partition("=")
            reason = re.sub(r"^\w+Exception: ", "", first_line(e)).split(" expecting ")[0]
            reason = "" if line in reason else f" ({reason})"
            if not eq:
                raise StagetrainError(f"'{line}' is not an override: write key=value (e.g. train.epochs=5) "
                                      f"or group=option (e.g. strategy=grow).") from None
            unclosed = [f"'{o}'" for o, c in ("[]", "{}", "()") if value.count(o) > value.count(c)]
            if unclosed:
                fix = f"{' and '.join(unclosed)} opened but not closed: e.g. \"{key}=[64,32]\" for a list"
            elif re.search(r"[=<>]", value):
                fix = ("Hydra's grammar reserves '=', '<' and '>' inside a value: "
                       + QUOTE_HINT.format(key=key, value=value))
            else:
                fix = ("check brackets, commas and quotes: a list is \"key=[a,b]\", a sweep key=a,b (with -m); "
                       "for a value with spaces, commas, brackets or '=', "
                       + QUOTE_HINT.format(key=key, value=value.strip("'\"")))
            raise StagetrainError(f"Cannot read the override {line}{reason}: {fix}.") from None


def check_target_quoted(overrides: list[str]) -> None:
    """``strategy.target=val/acc>=0.9`` typed without quotes: the shell takes ``>=0.9`` as a
    redirection (writing stdout to a file ``=0.9``) and stagetrain sees ``val/acc`` alone."""
    for line in overrides:
        key, _, value = line.partition("=")
        if key.lstrip("+~") != "strategy.target" or not value or value == "null" or re.search(r"[<>=]", value) \
                or "," in value:
            continue
        made = sorted(f.name for f in Path.cwd().iterdir() if re.fullmatch(r"=?[0-9.eE+-]+", f.name) and f.is_file())
        left = (f" (the shell has just created the file {', '.join(repr(m) for m in made)} here: delete it)"
                if made else "")
        raise StagetrainError(
            f"strategy.target={value} has no comparison. Without quotes the shell reads '>' and '<' as "
            f"redirections: strategy.target={value}>=0.9 becomes strategy.target={value} with the output "
            f"written to a file '=0.9'{left}. Quote the whole override: \"strategy.target='{value}>=0.9'\".")


def is_group(loader: Any, o: Any) -> bool:
    """A config group choice (``strategy=grow``, ``hydra/launcher=joblib``), not a key."""
    return o.package is None and loader.repository.group_exists(o.key_or_group)


# ------------------------------------------------------------------ explaining a failure
def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def explain(loader: Any, config_name: str, job: list[str], error: Exception) -> None:
    """Raise a StagetrainError for ``error`` (composing ``job``) when it can be explained."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    chain = list(_chain(error))
    for e in chain:
        if isinstance(e, yaml.MarkedYAMLError):
            mark = e.problem_mark or e.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            raise StagetrainError(f"YAML syntax error in {where}: {e.problem or e.context}.") from None
        if isinstance(e, yaml.YAMLError):
            raise StagetrainError(f"YAML syntax error in a config file: {first_line(e)}") from None
    parsed = OverridesParser.create().parse_overrides(job)
    plain = [o for o in parsed if o.type in (OverrideType.CHANGE, OverrideType.DEL)
             and not o.is_hydra_override() and not is_group(loader, o)]
    base = [o.input_line for o in parsed if o not in plain]
    tree = _key_tree(loader, config_name, base) if plain else None
    for o in plain:  # the first unknown key on the command line
        if tree is not None and not _has_key(tree, o.key_or_group):
            raise StagetrainError(f"Unknown config key '{o.key_or_group}'."
                                  + _suggest(loader, config_name, base, tree, o.key_or_group)) from None
    cause = next((e for e in chain if isinstance(e, ConfigKeyError | ConfigAttributeError | ValidationError)), None)
    if cause is None:
        return
    key = re.sub(r"\[(\d+)\]", r".\1", getattr(cause, "full_key", None) or "")
    matching = [o for o in plain if o.key_or_group == key or key.startswith(o.key_or_group + ".")]
    from_override = next((o for o in reversed(matching) if f"'{o.get_value_element_as_str()}'" in str(cause)),
                         matching[-1] if matching else None)
    if isinstance(cause, ValidationError) and key:
        kind = re.search(r"could not be converted to (\w+)|is not a valid (bool)", str(cause))
        name = kind and (kind.group(1) or "Boolean")
        expected = f"expected {TYPE_NAMES.get(name, name)}" if name else first_line(cause)
        if from_override is not None:
            raise StagetrainError(f"{from_override.key_or_group}={from_override.get_value_element_as_str()} "
                                  f"is not valid: {expected}.") from None
        raise StagetrainError(f"{key} is not valid in {_source(error)}: {expected}.") from None
    if key and from_override is None and isinstance(cause, ConfigKeyError | ConfigAttributeError):
        cls = getattr(cause, "object_type", None)  # a key set by a config file that its schema lacks
        names = [f.name for f in fields(cls)] if is_dataclass(cls) else []
        parent, _, leaf = key.rpartition(".")
        hint = did_you_mean(leaf, names)
        if hint and parent:
            hint = hint.replace("'", f"'{parent}.", 1)
        raise StagetrainError(f"Unknown config key '{key}' in {_source(error)}.{hint}") from None


def check_added_keys(loader: Any, config_name: str, job: list[str]) -> None:
    """``+key=value`` / ``++key=value`` on a key the schema does not have: refused as an unknown
    key, with the nearest valid key. Hydra lets ``+`` add any key, also inside a typed section
    (``+train.foo=1``), where nothing would read it. Still allowed: the entries of a free-form
    setting (``model.kwargs``, ``tune.grid``), config groups (``+experiment=...``), ``hydra.*``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parsed = OverridesParser.create().parse_overrides(job)
    added = [o for o in parsed if o.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
             and not o.is_hydra_override() and not is_group(loader, o)]
    if not added:
        return
    base = [o.input_line for o in parsed if not any(o is a for a in added)]
    tree = _key_tree(loader, config_name, base)
    if tree is None:
        return  # the composition fails without them: explained elsewhere
    for o in added:
        key = str(o.key_or_group)
        if _has_key(tree, key) or _free_form(tree, key):
            continue
        sign = "++" if o.type == OverrideType.FORCE_ADD else "+"
        if "." not in key:
            known = [str(k) for k in tree if k != "hydra"]
            raise StagetrainError(f"Unknown config key '{key}' (added with {sign}{key}=...): stagetrain reads only "
                                  f"{', '.join(known)}.{did_you_mean(key, known)}")
        raise StagetrainError(f"Unknown config key '{key}' (added with {sign}{key}=...)."
                              + _suggest(loader, config_name, base, tree, key))


def _free_form(tree: DictConfig, key: str) -> bool:
    """Whether ``key`` lies inside a setting of free form (a mapping or ``Any`` value such as
    ``model.kwargs`` or ``tune.grid``), where any entry may be added; not in a typed section."""
    node: Any = tree
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        else:
            break
    if isinstance(node, DictConfig):
        return not is_dataclass(OmegaConf.get_type(node))
    return isinstance(node, ListConfig) or type(node).__name__ == "AnyNode"


def _source(error: BaseException) -> str:
    """The config ('model/tiny') a composition error names, else 'a config file'."""
    found = re.search(r"In '([^']+)'", str(error))
    return f"config '{found.group(1)}'" if found else "a config file"


def _key_tree(loader: Any, config_name: str, overrides: list[str]) -> DictConfig | None:
    from hydra.types import RunMode

    try:
        return loader.load_configuration(config_name, overrides, RunMode.RUN)
    except Exception:  # noqa: BLE001
        return None


def _has_key(tree: Any, key: str) -> bool:
    node = tree
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def _children(tree: DictConfig, prefix: str) -> list[str]:
    node = OmegaConf.select(tree, prefix) if prefix else tree
    return [str(k) for k in node] if isinstance(node, DictConfig) else []


def _suggest(loader: Any, config_name: str, base: list[str], tree: DictConfig, key: str) -> str:
    """' Did you mean ...?' for the first segment of ``key`` that does not exist, or the
    group option that has ``key`` (``strategy.objective`` with ``strategy=grow``)."""
    parts = key.split(".")
    group = parts[0]
    if len(parts) > 1 and loader.repository.group_exists(group):  # exact key of another option
        current = tree[group].get("name") if isinstance(tree.get(group), DictConfig) else None
        others = [opt for opt in sorted(loader.get_group_options(group)) if opt != current]
        having = [opt for opt in others
                  if (t := _key_tree(loader, config_name, [*base, f"{group}={opt}"])) is not None and _has_key(t, key)]
        if having:
            return (f" It is a key of {' and '.join(f'{group}={h}' for h in having)}, not of "
                    f"{group}={current}.")
    depth = next(i for i in range(len(parts)) if not _has_key(tree, ".".join(parts[: i + 1])))
    prefix = ".".join(parts[:depth])
    siblings = [c for c in _children(tree, prefix) if c != "hydra"]
    hint = did_you_mean(parts[depth], siblings)
    if hint:
        guess = ".".join([*parts[:depth], hint.split("'")[1], *parts[depth + 1:]])
        if not _has_key(tree, guess):
            guess = ".".join([*parts[:depth], hint.split("'")[1]])
        return f" Did you mean '{guess}'?"
    if siblings:
        return f" Valid keys{' of ' + prefix if prefix else ''}: {', '.join(siblings)}."
    return f" '{prefix}' is a value, not a group of keys." if prefix else ""

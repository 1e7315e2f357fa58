"""Check the command line before Hydra runs it: short messages that name the key and the
nearest valid key or option, a non-zero exit, and nothing written.

Hydra composes the config the same way here as it will for the run (same search path,
``--config-dir`` included), without creating any directory and without importing torch
(only a config that composes is then checked by ``config.validate``, which does). When a
composition fails, the failure is explained: an unknown key (``trian.epochs=3``, with the
closest valid key), a group option that does not exist (``strategy=layerwize``, with the
closest option), a value of the wrong type, a YAML syntax error in a config file, a key a
config file sets that its schema lacks. What cannot be explained is left to Hydra, whose
own message is then printed (once) as before.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from stagetrain.errors import StagetrainError, did_you_mean, no_run_error, run_exists_error

CONFIG_MODULE = "pkg://stagetrain.conf"
TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false",
              "String": "a string"}


def check_command_line(argv: list[str]) -> list[str]:
    """Raise StagetrainError for a command line that would fail; return overrides to add.

    The returned overrides (``hydra.output_subdir=null`` when the run directory already
    holds a run) keep Hydra from rewriting files an earlier run wrote.
    """
    while _held:  # a new command in this process: the previous one has ended
        os.close(_held.pop())
    args = _parse_args(argv)
    if args is None or args.help or args.hydra_help or args.info or args.shell_completion \
            or args.experimental_rerun:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    _check_grammar(list(args.overrides))
    _check_target_quoted(list(args.overrides))
    try:
        parsed = OverridesParser.create().parse_overrides(list(args.overrides))
        loader = _loader(args.config_dir)
    except Exception:  # noqa: BLE001 - Hydra reports a bad override or --config-dir itself
        return []
    config_name = args.config_name or "config"
    multirun = args.multirun or any(
        o.key_or_group == "hydra.mode" and o.get_value_element_as_str() == "MULTIRUN" for o in parsed)
    _check_group_options(loader, parsed)
    cfg = None
    for job in _variants(parsed) if multirun else [list(args.overrides)]:
        try:
            composed = loader.load_configuration(config_name, job, RunMode.RUN)
        except Exception as e:  # noqa: BLE001
            _explain(loader, config_name, job, e)  # raises what it can explain
            return []  # Hydra will say what is wrong
        cfg = cfg or composed
    if cfg is None:
        return []
    _check_missing(loader, cfg)
    if multirun or args.cfg:
        return []  # a sweep's jobs are validated one by one as they run
    extra, lock = _check_run_dir(cfg, parsed)
    _validate(cfg)
    if lock is not None:
        _lock(lock)
    return extra


# ------------------------------------------------------------------ setup
def _parse_args(argv: list[str]) -> argparse.Namespace | None:
    """Hydra's own flags parsed as Hydra will; None when argparse would refuse them."""
    from hydra._internal.utils import get_args_parser

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return get_args_parser().parse_args(argv)
        except SystemExit:
            return None


def _loader(config_dir: str | None) -> Any:
    """Hydra's config loader with Hydra's search path (and ``--config-dir``), reading each
    config file once for all the compositions of one check."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_repository import CachingConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.override_parser.overrides_parser import OverridesParser

    class SharedCache(CachingConfigRepository):
        def __init__(self, delegate: Any, shared: dict[str, Any]):
            super().__init__(delegate)
            self.shared = shared

        def load_config(self, config_path: str) -> Any:
            if config_path not in self.shared:
                self.shared[config_path] = self.delegate.load_config(config_path=config_path)
            return copy.deepcopy(self.shared[config_path])  # Hydra may modify what it loads

    class Loader(ConfigLoaderImpl):
        shared: dict[str, Any] = {}

        def _parse_overrides_and_create_caching_repo(self, config_name: str | None,
                                                     overrides: list[str]) -> tuple[list[Any], Any]:
            parsed = OverridesParser.create().parse_overrides(overrides=overrides)
            if any(o.get_key_element() == "hydra.searchpath" for o in parsed):
                return super()._parse_overrides_and_create_caching_repo(config_name, overrides)
            repo = SharedCache(self.repository, self.shared)
            self._process_config_searchpath(config_name, parsed, repo)
            return parsed, repo

    search_path = create_config_search_path(CONFIG_MODULE)
    if config_dir is not None:
        path = os.path.abspath(config_dir)
        if not os.path.isdir(path):
            raise StagetrainError(f"--config-dir {config_dir}: no such directory.")
        search_path.prepend(provider="command-line", path=f"file://{path}",
                            anchor=SearchPathQuery(provider="schema"))
    loader = Loader(config_search_path=search_path)
    loader.shared = {}
    return loader


def _values(override: Any) -> list[str]:
    """The value strings of an override; every choice of a sweep."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _variants(parsed: list[Any]) -> list[list[str]]:
    """Sweep overrides expanded one at a time (the others at their first value): every
    value of every sweep is composed once, without composing the whole cartesian product."""
    first: list[str] = []
    sweeps: list[tuple[int, str, list[str]]] = []
    for i, o in enumerate(parsed):
        if not o.is_sweep_override():
            first.append(o.input_line)
            continue
        try:
            values = _values(o)
        except Exception:  # noqa: BLE001 - e.g. an interval sweep for an optimizing sweeper
            return []
        key = o.get_key_element()
        first.append(f"{key}={values[0]}")
        sweeps.append((i, key, values[1:]))
    jobs = [first]
    for i, key, rest in sweeps:
        jobs += [first[:i] + [f"{key}={v}"] + first[i + 1:] for v in rest]
    return jobs


# ------------------------------------------------------------------ checks
QUOTE_HINT = ("quote it twice, Hydra's quotes inside the shell's: \"{key}='{value}'\" (the shell "
              "removes the outer quotes, Hydra the inner ones)")


def _check_grammar(overrides: list[str]) -> None:
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
            reason = re.sub(r"^\w+Exception: ", "", _first_line(e)).split(" expecting ")[0]
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


def _check_target_quoted(overrides: list[str]) -> None:
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


def _is_group(loader: Any, o: Any) -> bool:
    """A config group choice (``strategy=grow``, ``hydra/launcher=joblib``), not a key."""
    return o.package is None and loader.repository.group_exists(o.key_or_group)


def _check_group_options(loader: Any, parsed: list[Any]) -> None:
    """``strategy=layerwize`` -> the options of the group and the closest one."""
    for o in parsed:
        if o.is_delete() or not _is_group(loader, o):
            continue
        try:
            values = _values(o)
        except Exception:  # noqa: BLE001
            continue
        options = sorted(loader.get_group_options(o.key_or_group))
        for value in values:
            if value not in options and value != "null":
                raise StagetrainError(
                    f"{o.key_or_group}={value}: config group '{o.key_or_group}' has no option '{value}' "
                    f"(no {o.key_or_group}/{value}.yaml).{did_you_mean(value, options)} "
                    f"Options: {', '.join(options)}.")


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, found without resolving anything (resolving
    ``hydra.run.dir`` would create a run directory)."""
    out: list[str] = []
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        if prefix == "" and key == "hydra":
            continue
        name = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(name)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig) and not child._is_none() \
                and not child._is_interpolation():
            out += _missing_keys(child, f"{name}.")
    return out


def _check_missing(loader: Any, cfg: DictConfig) -> None:
    """A ``???`` left in the config (a file, ``key=???``, a removed group)."""
    missing = _missing_keys(cfg)
    if missing:
        key = missing[0]
        hint = f"{key}=<value>"
        if "." not in key and loader.repository.group_exists(key):
            hint = f"{key}=<option>, one of {', '.join(sorted(loader.get_group_options(key)))}"
        raise StagetrainError(f"{key} has no value ('???' in the config): set it, e.g. {hint}.")


def _validate(cfg: DictConfig) -> None:
    """``config.validate`` on the composed config (values and combinations)."""
    from omegaconf.errors import OmegaConfBaseException

    from stagetrain.config import validate

    try:
        validate(cfg)
    except StagetrainError:
        raise
    except OmegaConfBaseException as e:
        raise StagetrainError(f"{getattr(e, 'full_key', '')}: {_first_line(e)}") from None
    except Exception:  # noqa: BLE001 - the run itself reports anything else
        return


def _check_run_dir(cfg: DictConfig, parsed: list[Any]) -> tuple[list[str], Path | None]:
    """Refuse before Hydra writes anything into a directory it must not touch; returns the
    overrides to add and the named run directory to lock."""
    explicit = next((o.get_value_element_as_str() for o in parsed
                     if o.key_or_group == "hydra.run.dir" and not o.is_delete()), None)
    resume = str(cfg.resume)
    if resume.strip() == "":
        raise StagetrainError("resume= is empty: use resume=never (a new run, the default), resume=auto "
                              "(continue the run in hydra.run.dir if there is one) or resume=<run dir>.")
    if explicit is not None and explicit.strip() == "":
        raise StagetrainError("hydra.run.dir= is empty: give a directory, or leave it out for a new "
                              "run directory under outputs/.")
    if resume not in ("never", "auto"):
        if not (Path(resume).expanduser() / "run.json").is_file():
            raise no_run_error(resume)
        target: str | None = explicit or resume
    else:
        target = explicit
    if target is None:
        return [], None
    path = Path(target).expanduser()
    if not (path / "run.json").is_file():
        return [], path
    if resume == "never":
        raise run_exists_error(target)
    return ["hydra.output_subdir=null"], path  # keep the run's own .hydra/ as it is


_held: list[int] = []  # directory locks held until this process exits


def _lock(path: Path) -> None:
    """One process per named run directory: two launches into the same hydra.run.dir (or
    resume=<dir>) at the same time would both start a run there; the second is refused.
    The lock (flock on the directory) goes away with the process, also after kill -9."""
    import errno
    import fcntl

    if os.environ.get("RANK", "0") != "0":
        return  # torchrun: only rank 0 writes the run directory
    path.mkdir(parents=True, exist_ok=True)  # Hydra makes it next; removed again if nothing runs
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise StagetrainError(
                f"Another stagetrain process is using the run directory {path} right now; "
                "wait for it to end, or use another hydra.run.dir.") from None
        return  # a file system without locks: nothing more to check
    _held.append(fd)


# ------------------------------------------------------------------ explaining a failure
def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _explain(loader: Any, config_name: str, job: list[str], error: Exception) -> None:
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
            raise StagetrainError(f"YAML syntax error in a config file: {_first_line(e)}") from None
    parsed = OverridesParser.create().parse_overrides(job)
    plain = [o for o in parsed if o.type in (OverrideType.CHANGE, OverrideType.DEL)
             and not o.is_hydra_override() and not _is_group(loader, o)]
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
        expected = f"expected {TYPE_NAMES.get(name, name)}" if name else _first_line(cause)
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

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
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from stagetrain import families
from stagetrain.app import hydra_private
from stagetrain.app.override_errors import (
    check_added_keys,
    check_grammar,
    check_target_quoted,
    explain,
    first_line,
    is_group,
)
from stagetrain.app.sweepcheck import check_jobs, composer
from stagetrain.core.errors import StagetrainError, did_you_mean, no_run_error, run_exists_error
from stagetrain.runs import runlock

CONFIG_MODULE = "pkg://stagetrain.conf"


def check_command_line(argv: list[str]) -> list[str]:
    """Raise StagetrainError for a command line that would fail; return overrides to add
    (``hydra.output_subdir=null`` when the run directory already holds a run: Hydra must not
    rewrite the files an earlier run wrote). A sweep: every job checked (sweepcheck.py)."""
    runlock.release_all()  # a new command in this process: the previous one has ended
    args = _parse_args(argv)
    if args is None or args.help or args.hydra_help or args.info or args.shell_completion \
            or args.experimental_rerun:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    check_grammar(list(args.overrides))
    check_target_quoted(list(args.overrides))
    try:
        parsed = OverridesParser.create().parse_overrides(list(args.overrides))
        loader = _loader(args.config_dir)
    except Exception:  # noqa: BLE001 - Hydra reports a bad override or --config-dir itself
        return []
    config_name = args.config_name or "config"
    multirun = args.multirun or any(
        o.key_or_group == "hydra.mode" and o.get_value_element_as_str() == "MULTIRUN" for o in parsed)
    _check_group_options(loader, parsed, config_name)
    cfg, compose = None, composer(loader, config_name)  # a sweep's variants: composed fast after the first
    for job in _variants(parsed) if multirun else [list(args.overrides)]:
        try:
            composed = loader.load_configuration(config_name, job, RunMode.RUN) if cfg is None else compose(job)
        except StagetrainError:
            raise
        except Exception as e:  # noqa: BLE001
            explain(loader, config_name, job, e)  # raises what it can explain
            return []  # Hydra will say what is wrong
        check_added_keys(loader, config_name, job)  # `+train.foo=1` composes, but nothing reads it
        cfg = cfg or composed
    if cfg is None:
        return []
    _check_missing(loader, cfg)
    if args.cfg:
        return []
    if multirun:  # every job of the sweep validated now (sweepcheck.py); each locked as it runs
        check_jobs(compose, cfg, parsed, _validate)
        sweep_dir = _explicit(parsed, "hydra.sweep.dir")
        if sweep_dir is not None:
            runlock.check_place(sweep_dir, "sweep directory", "hydra.sweep.dir")
            runlock.hold(sweep_dir, "sweep directory")
        else:
            runlock.check_creatable("outputs", "sweep directories under")
        return []
    extra, lock = _check_run_dir(cfg, parsed)
    _validate(cfg)
    if lock is not None:
        runlock.hold(lock)
    return extra


def _parse_args(argv: list[str]) -> argparse.Namespace | None:
    """Hydra's own flags parsed as Hydra will; None when argparse would refuse them."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return hydra_private.args_parser().parse_args(argv)
        except SystemExit:
            return None


def _loader(config_dir: str | None) -> Any:
    """Hydra's config loader with Hydra's search path (and ``--config-dir``), reading each
    config file once for all the compositions of one check (``hydra_private.config_loader``)."""
    if config_dir is not None and not os.path.isdir(os.path.abspath(config_dir)):
        raise StagetrainError(f"--config-dir {config_dir}: no such directory.")
    return hydra_private.config_loader(CONFIG_MODULE, config_dir, _check_user_file)


def _check_user_file(path: str) -> None:
    """A config file from the user's --config-dir: bounded in size and alias expansion."""
    from stagetrain.app.yamlguard import check_yaml_file

    check_yaml_file(path)


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


def _check_group_options(loader: Any, parsed: list[Any], config_name: str) -> None:
    """``strategy=layerwize`` -> the options of the group and the closest one."""
    searchpath = [p.input_line for p in parsed if p.get_key_element() == "hydra.searchpath"]
    for o in parsed:
        if o.is_delete() or not is_group(loader, o):
            continue
        try:
            values = _values(o)
        except Exception:  # noqa: BLE001
            continue
        options = sorted(loader.get_group_options(o.key_or_group, config_name=config_name, overrides=searchpath))
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

    from stagetrain.runs.config import validate

    try:
        with families.vouched_by(cfg):  # the command line's own config: its model.target is the user's
            validate(cfg)
    except StagetrainError:
        raise
    except OmegaConfBaseException as e:
        raise StagetrainError(f"{getattr(e, 'full_key', '')}: {first_line(e)}") from None
    except Exception:  # noqa: BLE001 - the run itself reports anything else
        return


def _check_run_dir(cfg: DictConfig, parsed: list[Any]) -> tuple[list[str], Path | None]:
    """Refuse before Hydra writes anything into a directory it must not touch; returns the
    overrides to add and the named run directory to lock."""
    explicit = _explicit(parsed, "hydra.run.dir")
    resume = str(cfg.resume)
    if resume.strip() == "":
        raise StagetrainError("resume= is empty: use resume=never (a new run, the default), resume=auto "
                              "(continue the run in hydra.run.dir if there is one) or resume=<run dir>.")
    if explicit is not None and explicit.strip() == "":
        raise StagetrainError("hydra.run.dir= is empty: give a directory, or leave it out for a new "
                              "run directory under outputs/.")
    if resume not in ("never", "auto") and not (Path(resume).expanduser() / "run.json").is_file():
        raise no_run_error(resume)
    target = explicit or resume if resume not in ("never", "auto") else explicit
    if target is None:  # a new directory under outputs/: refused here if it cannot be made
        runlock.check_creatable("outputs", "run directories under")
        return [], None
    runlock.check_place(target, "run directory", "hydra.run.dir" if explicit is not None else "resume")
    path = runlock.identity(target)  # the run's one name, for the lock and every message
    if not (path / "run.json").is_file():
        return [], path
    if resume == "never":
        raise run_exists_error(path)
    runlock.check_writable(path)  # resuming (or recording a skip) writes there
    from stagetrain.runread import read_info

    info = read_info(path)  # refused here, before Hydra appends to the run's log
    if info["status"] == "unreadable":
        raise StagetrainError(f"Could not read {path / 'run.json'} ({info['error']}). The run's status is "
                              "unknown; move the directory aside, or restore run.json (its config is also in "
                              ".hydra/config.yaml), then try again.")
    return ["hydra.output_subdir=null"], path  # keep the run's own .hydra/ as it is


def _explicit(parsed: list[Any], key: str) -> str | None:
    """The value an override gives ``key``, unescaped as Hydra will use it (``my\\ runs`` is
    the directory ``my runs``); None when not given or a sweep."""
    for o in parsed:
        if o.key_or_group == key and not o.is_delete() and not o.is_sweep_override():
            return str(o.value())
    return None

"""Every use of Hydra's private code (``hydra._internal``, and the functions of
``hydra.core.utils`` that stagetrain wraps), in one module, each with why there is no public
way. ``tests/test_hydra_public.py`` fails when another module of the package imports
``hydra._internal`` or patches ``hydra.core.utils``, and when the installed Hydra is outside
``HYDRA_RANGE``: the range pinned in pyproject.toml (``hydra-core>=1.3,<1.4``); the test
suite ran on Hydra 1.3.8, the version installed when this module was written. A Hydra
outside the range fails that test first: re-check each use below against its source.

Public Hydra is used everywhere else: ``hydra.main``, ``HydraConfig``, ``ConfigStore``,
callbacks, ``hydra.errors``, and the override grammar ``hydra.core.override_parser`` (not
under ``_internal``; it is the interface sweeper and launcher plugins are written against).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

HYDRA_RANGE = ((1, 3), (1, 4))  # >= 1.3, < 1.4, as pyproject.toml pins hydra-core
# The basic sweeper's class, as a sweep's config names it (``hydra.sweeper._target_``): the
# sweep pre-check expands only its sweeps (``split_sweep``); its path is private to Hydra.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def version_ok(version: str) -> bool:
    """Is a Hydra version string (``1.3.8``, ``1.3.2.dev0``) inside ``HYDRA_RANGE``?"""
    parts = tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:2])
    return HYDRA_RANGE[0] <= parts < HYDRA_RANGE[1]


def args_parser() -> Any:
    """The argparse parser of ``@hydra.main`` (its flags: ``-m``, ``--cfg``, ``--config-dir``...).
    Private because Hydra exposes no parser; the command-line check must parse the flags
    exactly as the Hydra that runs the command will."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def config_loader(config_module: str, config_dir: str | None, check_file: Callable[[str], None]) -> Any:
    """Hydra's config loader with Hydra's search path (``config_module`` and ``--config-dir``),
    reading each config file once for all the compositions of one check (``check_file`` sees
    the path of each file read from a folder, i.e. ``--config-dir``, before Hydra reads it).

    Private because the compose API (``hydra.compose``) has no handle on the search path's
    repository (group options, ``group_exists``: the "did you mean" messages), composes
    through the global Hydra instance (which a running job owns), and re-reads every file on
    each call (a 100-job sweep check would read the tree 100 times)."""
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
                if config_dir is not None:  # only the user's own files can be hostile
                    path = _file_of(self.delegate, config_path)
                    if path is not None:
                        check_file(path)
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

    search_path = create_config_search_path(config_module)
    if config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    loader = Loader(config_search_path=search_path)
    loader.shared = {}
    return loader


def _file_of(repository: Any, config_path: str) -> str | None:
    """The file a config is read from, when its source is a folder (``file://``). Private:
    Hydra's repository finds a config's source only through its private methods."""
    from hydra.core.object_type import ObjectType

    source = repository._find_object_source(config_path, ObjectType.CONFIG)
    if source is None or source.scheme() != "file":
        return None
    return os.path.join(source.path, source._normalize_file_name(config_path))


def apply_overrides(overrides: list[Any], cfg: Any) -> None:
    """Parsed value overrides applied to a composed config, as Hydra applies them (``+key``,
    ``~key``, ``++key``, typed values). Private: Hydra's one implementation of the override
    semantics is a static method of its config loader; no public function applies them."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)


def split_sweep(parsed: list[Any]) -> list[list[list[str]]]:
    """The jobs of a basic sweep, in Hydra's order, batched as Hydra batches them. Private:
    the basic sweeper is a core plugin under ``hydra._internal``; its expansion is not
    exposed otherwise."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(parsed, None)


def wrap_hydra_writes(refuse: Callable[[OSError, object], None]) -> None:
    """Hydra opens a job's log (``configure_log``) and writes ``.hydra/*.yaml`` and a sweep's
    ``multirun.yaml`` (``_save_config``) before the job starts; ``refuse(error, path)`` is
    called for an ``OSError`` there (a full disk). Private because these writes come before
    any callback (``on_job_start`` runs after them) and inside Hydra's ``run_job``: wrapping
    the two functions of ``hydra.core.utils`` is the only place to catch them. Idempotent."""
    import hydra.core.utils as hydra_utils

    if getattr(hydra_utils._save_config, "stagetrain_guard", False):
        return
    save_original, log_original = hydra_utils._save_config, hydra_utils.configure_log

    def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
        try:
            save_original(cfg, filename, output_dir)
        except OSError as e:
            refuse(e, Path(output_dir) / filename)

    def configure_log(*args: Any, **kwargs: Any) -> None:
        try:
            log_original(*args, **kwargs)
        except ValueError as e:  # logging.config's wrapper of the OSError opening the log file
            if not isinstance(e.__cause__, OSError):
                raise
            refuse(e.__cause__, e.__cause__.filename or "the job's log")

    save_config.stagetrain_guard = True  # type: ignore[attr-defined]
    hydra_utils._save_config, hydra_utils.configure_log = save_config, configure_log

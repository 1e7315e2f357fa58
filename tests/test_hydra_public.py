"""Hydra through its public API: every use of Hydra's private code (``hydra._internal``, the
wrapped functions of ``hydra.core.utils``) is in ``stagetrain/app/hydra_private.py`` (an AST
scan of the package, like tests/test_userfile.py's), and the installed Hydra is inside the
range that module and pyproject.toml pin."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hydra

from stagetrain.app import hydra_private

PKG = Path(hydra_private.__file__).resolve().parents[1]
PRIVATE_MODULE = "app/hydra_private.py"
# Private members of Hydra's classes and modules that stagetrain uses (through hydra_private only)
PRIVATE_MEMBERS = {"_find_object_source", "_normalize_file_name", "_apply_overrides_to_config",
                   "_parse_overrides_and_create_caching_repo", "_process_config_searchpath", "_save_config"}


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each private Hydra use: an import of ``hydra._internal`` or of
    ``hydra.core.utils`` (the module whose functions are wrapped), an assignment to an
    attribute of that module, or a string naming a ``hydra._internal`` path."""
    out: list[tuple[int, str]] = []
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(("hydra._internal", "hydra.core.utils")):
                    out.append((node.lineno, f"import {a.name}"))
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            if node.module.startswith(("hydra._internal", "hydra.core.utils")) or (
                    node.module in ("hydra", "hydra.core") and {"_internal", "utils"} & set(names)):
                out.append((node.lineno, f"from {node.module} import {', '.join(names)}"))
                aliases.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "hydra._internal" in node.value \
                and " " not in node.value:  # a dotted path as a value, not prose in a docstring
            out.append((node.lineno, repr(node.value)))
    for node in ast.walk(tree):  # hydra_utils.x = ...; repository._find_object_source(...)
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_MEMBERS:
            out.append((node.lineno, f"uses .{node.attr}"))
        targets = node.targets if isinstance(node, ast.Assign) else []
        for t in targets:
            for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(el, ast.Attribute) and ast.unparse(el.value) in aliases | {"hydra.core.utils"}:
                    out.append((node.lineno, f"assigns {ast.unparse(el)}"))
    return out


def _scan() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        uses = _private_uses(ast.parse(path.read_text(), filename=rel))
        if uses:
            found[rel] = uses
    return found


def test_no_module_but_hydra_private_uses_hydras_private_code():
    found = _scan()
    assert PRIVATE_MODULE in found, "the scan must see hydra_private.py's own private imports"
    others = {k: v for k, v in found.items() if k != PRIVATE_MODULE}
    assert not others, f"Hydra's private code used outside {PRIVATE_MODULE}: {others}"


def test_the_scan_catches_each_kind_of_private_use():
    snippets = {
        "from hydra._internal.utils import get_args_parser": "from hydra._internal.utils",
        "import hydra._internal.config_loader_impl as cli": "import hydra._internal",
        "from hydra.core import utils\nutils.configure_log = print": "assigns utils.configure_log",
        "import hydra.core.utils as hu\nhu._save_config, hu.x = 1, 2": "assigns hu._save_config",
        "T = 'hydra._internal.core_plugins.basic_sweeper.BasicSweeper'": "hydra._internal.core_plugins",
        "src = loader.repository._find_object_source(name, kind)": "uses ._find_object_source",
    }
    for source, expected in snippets.items():
        uses = _private_uses(ast.parse(source))
        assert any(expected in what for _, what in uses), (source, uses)
    assert _private_uses(ast.parse("from hydra.core.override_parser.overrides_parser import OverridesParser\n"
                                   "from hydra.core.hydra_config import HydraConfig")) == []


def test_installed_hydra_is_inside_the_pinned_range():
    pyproject = (PKG.parent / "pyproject.toml").read_text()
    pin = re.search(r'"hydra-core>=(\d+)\.(\d+),<(\d+)\.(\d+)"', pyproject)
    assert pin, "pyproject.toml must pin hydra-core as >=X.Y,<X.Z"
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    assert hydra_private.HYDRA_RANGE == (low, high), "hydra_private.HYDRA_RANGE must match pyproject.toml"
    assert hydra_private.version_ok(hydra.__version__), f"Hydra {hydra.__version__} is outside {low}..<{high}"
    assert hydra_private.version_ok("1.3.2") and not hydra_private.version_ok("1.4.0.dev1")
    assert not hydra_private.version_ok("1.2.0")

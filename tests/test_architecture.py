"""The code's shape, as docs/architecture.md promises it: the layers import downwards only,
nothing below the run layer sees Hydra or OmegaConf, modules and functions stay small, and
a strategy is one folder that is found without being registered anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "stagetrain"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


BELOW_RUN = ["stagetrain.engine", "stagetrain.checkpoint", "stagetrain.models", "stagetrain.data",
             "stagetrain.strategies", "stagetrain.plan", "stagetrain.schema", "stagetrain.growth",
             "stagetrain.objectives", "stagetrain.optim", "stagetrain.flops", "stagetrain.source",
             "stagetrain.families"]


@pytest.mark.parametrize("layer", BELOW_RUN)
def test_no_module_below_the_run_layer_imports_hydra_or_omegaconf(layer):
    offenders = {}
    for path in _modules():
        if _name(path) == layer or _name(path).startswith(layer + "."):
            bad = {m for m in _imports(path) if m.split(".")[0] in ("hydra", "omegaconf")}
            if bad:
                offenders[_name(path)] = sorted(bad)
    assert not offenders, f"these modules see the Hydra config: {offenders}"


# (importer, imported prefix): an import the layering forbids (cli -> run -> strategies -> plan <- engine)
FORBIDDEN = [
    ("stagetrain.engine", "stagetrain.strategies"), ("stagetrain.engine", "stagetrain.runner"),
    ("stagetrain.engine", "stagetrain.config"), ("stagetrain.engine", "stagetrain.cli"),
    ("stagetrain.strategies", "stagetrain.engine"), ("stagetrain.strategies", "stagetrain.runner"),
    ("stagetrain.strategies", "stagetrain.config"), ("stagetrain.strategies", "stagetrain.cli"),
    ("stagetrain.checkpoint", "stagetrain.engine"), ("stagetrain.checkpoint", "stagetrain.runner"),
    ("stagetrain.plan", "stagetrain."), ("stagetrain.schema", "stagetrain."),
    ("stagetrain.runner", "stagetrain.cli"),
]


def test_imports_only_go_down_the_layers():
    found = []
    for path in _modules():
        me = _name(path)
        for imported in _imports(path):
            for importer, prefix in FORBIDDEN:
                if (me == importer or me.startswith(importer + ".")) and imported.startswith(prefix):
                    found.append(f"{me} imports {imported}")
    assert not found, "\n".join(found)


def test_no_module_over_300_lines():
    long = {_name(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"split these modules (lines): {long}"


def test_no_function_over_60_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_name(path)}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_every_strategy_folder_is_a_complete_strategy():
    from stagetrain.strategies import STRATEGIES, Strategy

    folders = sorted(p.name for p in (PKG / "strategies").iterdir() if (p / "__init__.py").is_file())
    assert sorted(STRATEGIES) == folders
    conf = PKG.parent / "conf" / "strategy"
    for name, module in STRATEGIES.items():
        assert isinstance(module, Strategy) and module.name == name
        assert (PKG / "strategies" / name / "README.md").is_file(), f"{name} has no README.md"
        assert (conf / f"{name}.yaml").is_file(), f"{name} has no conf/strategy/{name}.yaml"


def test_every_model_family_has_its_config_and_no_torch_import():
    from stagetrain.families import FAMILIES, family

    conf = PKG.parent / "conf" / "model"
    assert sorted(p.stem for p in conf.glob("*.yaml")) == sorted(FAMILIES)
    for name in FAMILIES:
        module = family(name)
        for attr in ("Config", "validate", "spec"):
            assert hasattr(module, attr), f"stagetrain/families/{name}.py has no {attr}"
        tree = ast.parse((PKG / "families" / f"{name}.py").read_text())
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert "torch" not in {m.split(".")[0] for m in top}, (
            f"families/{name}.py imports torch at module level; the config layer loads it at start-up")


def test_every_package_is_installed_by_a_non_editable_install():
    """pyproject lists packages by name: a new sub-package missing there works in the editable
    checkout and is absent from a wheel (``pip install .``); strategy folders ship as package data."""
    import tomllib

    setup = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    packages = {_name(p) for p in PKG.rglob("__init__.py") if p.parent.parent.name != "strategies"}
    assert packages <= listed, f"add {sorted(packages - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "*/*.py" in setup["package-data"]["stagetrain.strategies"]

"""Every command of README.md and docs/*.md runs as written.

Which commands run (the rule, also in README "Tests and benchmarks"):

* Every fenced ```` ```bash ```` and ```` ```python ```` block, and every indented line (4+
  spaces, outside a fence) that starts with ``stagetrain``, ``stagetrain-report``, ``python``,
  ``torchrun`` or ``STAGETRAIN_DATA=``. A bash block runs command by command (``\\``
  continues a line, ``#`` comments are ignored) through ``bash -c`` in one work directory; a
  python block runs as one script. Other fences (plain ```` ``` ````, ```` ```text ````) are
  output or diagrams.
* A block right below ``<!-- docs-test: not run (why) -->`` is not run: a file's content (the
  sbatch script; tests/test_launchers.py submits it), or a system install.
* A command holding a placeholder (``<...>``, ``...`` as an argument or a path part, the stand-in
  package ``mypkg``) is a template: not run. A command that needs a GPU (``device=cuda``, more
  than 2 torchrun processes) runs only where CUDA is available: CI has none, and allows only
  tests/test_cuda.py to skip. A command naming your own files (``~/data/flowers``) runs only
  where they exist.
* ``pip install`` and ``pytest`` are not run here: they reinstall the package under test or run
  this suite inside itself; ``.ci/run`` runs the README's on a fresh machine. In ``pip install
  ... && stagetrain``, the part after ``&&`` runs.

A documented experiment (``stagetrain -m experiment=<name> ...``: its sweep trains for hours as
written) runs with ``dry_run=true`` appended, a documented override: every job of the sweep
is composed, checked and planned, nothing trained. A later command of the same block that
reads what that sweep would write (``benchmarks/lm_grow.py --from-sweep``) is then not run.

Commands run as written in a copy of the repository (``<tmp>/main``, with ``<tmp>/shared``
pointing at ``../shared``), with ``STAGETRAIN_DATA`` set to the shared data. A ``stagetrain``
command that trains gets ``SHORT`` appended (documented overrides; a later value of a key wins):
never anything else. Blocks run in document order as far as they depend on each other: a block
that names a directory an earlier block writes (``hydra.run.dir=``, ``hydra.sweep.dir=``,
``run_dir=``) runs that block first, in the same work directory.

What a command needs is read from its text: the real MNIST / Fashion-MNIST / fortunes files
(skipped with the reason when ``../shared/data`` lacks them), a SLURM cluster (skipped without
``sinfo`` answering).
Quick blocks (single ``stagetrain`` runs on the built-in digits data) run by default; sweeps
(``-m``), real data, SLURM, torchrun, python blocks and the blocks depending on them are
``full``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import DATA_ROOT, has_real_data

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHORT = ["train.epochs=3", "dataset.max_train=300", "plots=false", "progress=off"]
NOT_RUN = ("<!-- docs-test: not run", "<!-- sbatch-example:")  # the sbatch script: tests/test_launchers.py
PROGRAMS = ("stagetrain", "stagetrain-report", "python", "torchrun", "STAGETRAIN_DATA=")
NEEDS_DATA = re.compile(r"mnist|fashion|fortunes|shared/data|experiment=(?!strategies_digits|transfer_digits)|text")
WRITES = re.compile(r"""(?:hydra\.run\.dir|hydra\.sweep\.dir|run_dir)=["']?([\w./-]+)""")
PLACEHOLDER = re.compile(r"<[^>]*>|\s\.\.\.(\s|$)|/\.\.\./|\bmypkg\b")
NEEDS_GPU = re.compile(r"device=cuda|--nproc-per-node [3-9]")
TIMEOUT = 3600


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    commands: list[str]
    needs: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _commands(lines: list[str]) -> list[str]:
    """Shell commands of a bash block: continuation lines joined, comment lines dropped."""
    out, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def _runnable(command: str) -> str | None:
    """The part of a command this test runs (None: not run here, see the rule)."""
    if PLACEHOLDER.search(command) or (NEEDS_GPU.search(command) and not _cuda()):
        return None
    if any(not Path(p).expanduser().exists() for p in re.findall(r"(~/[\w./-]+)", command)):
        return None  # your own files (~/data/flowers): a CI skip would fail .ci/check-skips
    if command.startswith(("pip ", "pytest")):
        rest = command.split("&&", 1)
        return rest[1].strip() if len(rest) == 2 and not rest[1].strip().startswith("pytest") else None
    return command


def blocks(path: Path) -> list[Block]:
    """The runnable blocks of one document (the rule above)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        skipped = i > 0 and lines[i - 1].startswith(NOT_RUN)
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[i + 1:end]
            if fence.group(1) == "bash" and not skipped:
                out.append(Block(path.name, i + 1, "bash", _commands(body)))
            elif fence.group(1) == "python" and not skipped:
                out.append(Block(path.name, i + 1, "python", ["\n".join(body)]))
            i = end + 1
            continue
        if lines[i].startswith("    ") and lines[i].strip().startswith(PROGRAMS) and not skipped:
            start = i
            while i + 1 < len(lines) and (lines[i].rstrip().endswith("\\") or (
                    lines[i + 1].startswith("    ") and lines[i + 1].strip().startswith(PROGRAMS))):
                i += 1
            out.append(Block(path.name, start + 1, "bash", _commands(lines[start:i + 1])))
        i += 1
    for block in out:
        block.commands = [c for c in (_runnable(c) if block.lang == "bash" else c for c in block.commands)
                          if c and not (block.lang == "python" and PLACEHOLDER.search(c))]
    return [b for b in out if b.commands]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _slurm() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0


def _is_long(block: Block) -> bool:
    text = "\n".join(block.commands)
    return block.lang == "python" or bool(re.search(r"(^|\s)-m\s|torchrun|slurm|stagetrain-report", text)) \
        or bool(NEEDS_DATA.search(text))


ALL = [b for doc in DOCS for b in blocks(doc)]
BY_ID = {b.id: b for b in ALL}


def _writers(block: Block) -> list[Block]:
    """Earlier blocks of the same document that write a directory this block names."""
    text = "\n".join(block.commands)
    earlier = [b for b in ALL if b.doc == block.doc and b.line < block.line]
    return [b for b in earlier if any(re.search(rf"(^|[\s=\"']){re.escape(p)}(/|\s|\"|'|$)", text)
                                      for p in WRITES.findall("\n".join(b.commands)))]


def _needs(block: Block) -> str | None:
    """Why this block cannot run here (None: it can)."""
    text = "\n".join([*block.commands, *("\n".join(w.commands) for w in _writers(block))])
    if NEEDS_DATA.search(text) and not has_real_data(DATA_ROOT):
        return f"needs the real MNIST / Fashion-MNIST / fortunes files in {DATA_ROOT} (or STAGETRAIN_DATA)"
    if re.search(r"hydra/launcher=slurm|sbatch|srun", text) and not _slurm():
        return "needs a SLURM cluster (sinfo does not answer): sudo .ci/slurm-up"
    return None


def _params() -> list:
    out = []
    for b in ALL:
        marks = [pytest.mark.full] if _is_long(b) or any(_is_long(w) for w in _writers(b)) else []
        out.append(pytest.param(b.id, marks=marks, id=b.id))
    return out


EXPERIMENT = re.compile(r"(^|\s)-m\s.*\bexperiment=")


def shorten(command: str) -> str:
    """``SHORT`` appended to a stagetrain command that trains, before a trailing comment; a
    documented experiment's sweep gets ``dry_run=true`` instead (the rule above)."""
    if not re.search(r"(^|\s|\$\(which )stagetrain(\)|\s|$)", command) or "dry_run=true" in command:
        return command
    body, comment = _split_comment(command)
    added = ["dry_run=true", "progress=off"] if EXPERIMENT.search(body) else SHORT
    return f"{body.rstrip()} {' '.join(added)}{comment}"


def _split_comment(command: str) -> tuple[str, str]:
    quote = None
    for k, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or command[k - 1].isspace()):
            return command[:k], "  " + command[k:]
    return command, ""


@pytest.fixture(scope="session")
def docs_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository (without outputs, build and virtual environments) beside a
    link to ../shared, as a fresh clone sits."""
    root = tmp_path_factory.mktemp("docs")
    ignore = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__", "multirun")
    shutil.copytree(REPO, root / "main", ignore=ignore, symlinks=True)
    if (REPO.parent / "shared").exists():
        (root / "shared").symlink_to(REPO.parent / "shared")
    return root / "main"


_done: dict[str, str] = {}  # block id -> its failure ("" when it ran), per worker


def run_block(block: Block, cwd: Path) -> str:
    """Run a block (after the earlier blocks it depends on); '' or what failed."""
    if block.id in _done:
        return _done[block.id]
    failures = [f"(an earlier block it depends on) {w.id}: {f}" for w in _writers(block) if (f := run_block(w, cwd))]
    env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dry = False  # a documented experiment ran as a dry run: what reads its outputs is not run
    for command in block.commands:
        if block.lang == "bash" and EXPERIMENT.search(command):
            dry = True
        elif dry and "stagetrain" not in command:
            continue
        if block.lang == "python":
            argv = [sys.executable, "-c", command]
        else:
            argv = ["bash", "-c", shorten(command)]
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        if proc.returncode != 0:
            failures.append(f"`{argv[-1][:300]}` exited {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}")
    _done[block.id] = "\n".join(failures)
    return _done[block.id]


def test_the_documents_hold_commands():
    """The extraction itself: the README's quick start and examples are found."""
    ids = {b.id.split(":")[0] for b in ALL}
    assert {"README.md", "results.md"} <= ids
    quick = next(b for b in ALL if b.doc == "README.md")
    assert quick.commands[0].startswith("stagetrain "), "pip install -e . && stagetrain: the part after && runs"
    assert shorten("stagetrain -m strategy=a,b  # x") == f"stagetrain -m strategy=a,b {' '.join(SHORT)}  # x"
    assert shorten("stagetrain -m experiment=grow_vs_scratch seed=0,1") == \
        "stagetrain -m experiment=grow_vs_scratch seed=0,1 dry_run=true progress=off"
    assert len([c for b in ALL for c in b.commands]) > 60


@pytest.mark.parametrize("block_id", _params())
def test_documented_command_runs_as_written(block_id, docs_workdir):
    block = BY_ID[block_id]
    reason = _needs(block)
    if reason:
        pytest.skip(reason)
    failed = run_block(block, docs_workdir)
    assert not failed, f"{block.id}:\n{failed}"

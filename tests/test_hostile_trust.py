"""A file is data: code named by a file never runs. Every row hands stagetrain a file (or a
run directory) whose architecture spec names a Python callable that would create a marker
file, through every path that reads a spec -- a fine-tuning source (.safetensors, .pt,
.pth, a run directory, its checkpoints), the dry run, ``resume=auto`` and ``resume=<dir>``,
``strategy.arch_from``, a resumed run's saved config -- and checks: the marker never
appears, the exit code is non-zero, one ``Error:`` paragraph names the file and the
callable, no traceback, and nothing in the working directory changed. Then the Python API
(``stagetrain.load``), the report, and the way to vouch for one's own network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hostile import TINY, assert_refused, fingerprint, good_run, run_main  # noqa: F401 - good_run: a fixture
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stagetrain import checkpoint as ckpt
from stagetrain.core.errors import StagetrainError

MARKER = "PWNED"  # created in the working directory by every hostile spec, if it ever ran
FT = ["strategy=finetune", "train.epochs=1"]
SMALL = ["model=custom", "model.target=custom_net.SmallNet", "model.stem=[conv,bn,act]", "model.blocks=[stage1,stage2]",
         "model.head=fc", "model.head_input=pool_flatten", "dataset.max_train=64", "train.batch_size=64"]


def _evil(marker: Path) -> dict[str, dict]:
    """Shared parts that would run a command or write a file if their target were called."""
    cmd = f"touch {marker}"
    return {
        "run": {"type": "custom_module", "target": "subprocess.run", "kwargs": {"args": cmd, "shell": True}},
        "popen": {"type": "custom_module", "target": "subprocess.Popen", "kwargs": {"args": cmd, "shell": True}},
        "check_call": {"type": "custom_module", "target": "subprocess.check_call",
                       "kwargs": {"args": cmd, "shell": True}},
        "system": {"type": "custom_module", "target": "os.system", "kwargs": {"command": cmd}},
        "copy": {"type": "custom_module", "target": "shutil.copyfile", "kwargs": {"src": "/etc/hostname", "dst": str(marker)}},
        "exec": {"type": "custom_module", "target": "builtins.exec",
                 "kwargs": {"source": f"open({str(marker)!r}, 'w')"}},
        "eval": {"type": "custom_module", "target": "builtins.eval", "kwargs": {"source": f"open({str(marker)!r}, 'w')"}},
        "nested": {"type": "custom_module", "target": "torch.hub.load", "kwargs": {"repo_or_dir": "x/y", "model": "z"}},
        "not_string": {"type": "custom_module", "target": ["subprocess", "run"], "kwargs": {}},
        "bad_type": {"type": "python_callable", "target": "subprocess.run", "kwargs": {"args": cmd, "shell": True}},
        "bad_kwargs": {"type": "custom_module", "target": "torchvision.models.resnet18", "kwargs": [cmd]},
        "download": {"type": "custom_module", "target": "torchvision.models.resnet18",
                     "kwargs": {"weights": "DEFAULT", "num_classes": 10}},
    }


def _craft(base: Path, run: Path, marker: Path) -> dict[str, Path]:
    """Every kind of file that carries a spec, with each evil shared part (digests recomputed)."""
    made: dict[str, Path] = {}
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        arch = json.loads(f.metadata()["arch"])
    tensors = load_file(str(run / "model.safetensors"))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for name, part in _evil(marker).items():
        spec = {**arch, "shared": part}
        save_file(tensors, str(base / f"{name}.safetensors"), metadata={"arch": json.dumps(spec)})
        s = {**state, "arch": spec}
        s["sha256"] = ckpt.digest(s)
        torch.save(s, base / f"{name}.pt")
        made[f"st_{name}"], made[f"pt_{name}"] = base / f"{name}.safetensors", base / f"{name}.pt"
    shutil.copy(base / "run.pt", base / "run_ckpt.pth")  # a full checkpoint under a bare-weights name
    made["pth_run"] = base / "run_ckpt.pth"
    # a run directory whose every checkpoint and model.safetensors carry the spec, stopped mid-way
    evil_run = base / "evilrun"
    shutil.copytree(run, evil_run)
    for p in (evil_run / "checkpoints").glob("*.pt"):
        shutil.copy(base / "run.pt", p)
    shutil.copy(base / "run.safetensors", evil_run / "model.safetensors")
    info = json.loads((evil_run / "run.json").read_text())
    (evil_run / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    made["evilrun"] = evil_run
    # a run whose saved config (run.json, what a resume runs) names the callable as model.target
    cfg_run = base / "cfgrun"
    shutil.copytree(run, cfg_run)
    model = {"name": "custom", "target": "subprocess.run", "kwargs": {"args": f"touch {marker}", "shell": True},
             "stem": [], "blocks": ["stdout"], "head": "stderr", "head_input": "none", "in_channels_adapt": "none"}
    config = {**info["config"], "model": model, "trust_targets": ["subprocess.run"]}
    (cfg_run / "run.json").write_text(json.dumps({**info, "status": "stopped", "config": config}))
    made["cfgrun"] = cfg_run
    # weights that do not fit the architecture stored with them (digest recomputed)
    s = {**state, "arch": {**arch, "blocks": [{**arch["blocks"][0], "out": 9}]}}
    s["sha256"] = ckpt.digest(s)
    torch.save(s, base / "misfit.pt")
    save_file(tensors, str(base / "misfit.safetensors"), metadata={"arch": json.dumps(s["arch"])})
    made["pt_misfit"], made["st_misfit"] = base / "misfit.pt", base / "misfit.safetensors"
    return made


SPECS = ["run", "popen", "check_call", "system", "copy", "exec", "eval", "nested"]
CASES: list[tuple[list[str], list[str]]] = []
for name in SPECS:
    target = {"run": "subprocess.run", "popen": "subprocess.Popen", "check_call": "subprocess.check_call",
              "system": "os.system", "copy": "shutil.copyfile", "exec": "builtins.exec", "eval": "builtins.eval",
              "nested": "torch.hub.load"}[name]
    CASES.append(([*FT, f"strategy.source={{st_{name}}}"], [f"{name}.safetensors", target, "trust_targets"]))
    CASES.append(([*FT, f"strategy.source={{pt_{name}}}"], [f"{name}.pt", target, "trust_targets"]))
CASES += [
    ([*FT, "strategy.source={st_run}", "dry_run=true"], ["run.safetensors", "subprocess.run"]),
    ([*FT, "strategy.source={pt_run}", "dry_run=true"], ["run.pt", "subprocess.run"]),
    ([*FT, "strategy.source={pt_system}", "strategy.mode=linear_probe", "dry_run=true"], ["system.pt", "os.system"]),
    ([*FT, "strategy.source={pth_run}"], ["run_ckpt.pth", "subprocess.run"]),
    ([*FT, "strategy.source={pth_run}", "dry_run=true"], ["run_ckpt.pth", "subprocess.run"]),
    ([*FT, "strategy.source={evilrun}"], ["evilrun/checkpoints/best.pt", "subprocess.run"]),
    ([*FT, "strategy.source={evilrun}", "strategy.source_checkpoint=last"], ["checkpoints/last.pt", "subprocess.run"]),
    ([*FT, "strategy.source={evilrun}", "strategy.source_checkpoint=stage-1"], ["stage-1", "subprocess.run"]),
    ([*FT, "strategy.source={evilrun}/model.safetensors"], ["evilrun/model.safetensors", "subprocess.run"]),
    ([*FT, "strategy.source={st_run}", "trust_targets=[subprocess.Popen]"], ["run.safetensors", "subprocess.run"]),
    ([*FT, "strategy.source={st_run}", "model=custom", "model.target=custom_net.SmallNet", "model.blocks=[stage1]",
      "model.head=fc", "model.head_input=pool_flatten"], ["run.safetensors", "subprocess.run"]),
    ([*FT, "strategy.source={st_not_string}"], ["['subprocess', 'run']"]),
    ([*FT, "strategy.source={pt_not_string}"], ["not_string.pt", "['subprocess', 'run']"]),
    ([*FT, "strategy.source={st_bad_type}"], ["bad_type.safetensors", "not a custom_module"]),
    ([*FT, "strategy.source={pt_bad_type}", "dry_run=true"], ["bad_type.pt", "not a custom_module"]),
    ([*FT, "strategy.source={st_bad_kwargs}"], ["bad_kwargs.safetensors", "not a mapping"]),
    ([*FT, "strategy.source={st_download}"], ["download.safetensors", "weights='DEFAULT'", "never downloads"]),
    ([*FT, "strategy.source={pt_download}", "dry_run=true"], ["download.pt", "never downloads"]),
    (["strategy=scratch", "strategy.arch_from={evilrun}", "train.epochs=1"], ["strategy.arch_from=", "subprocess.run"]),
    (["strategy=scratch", "strategy.arch_from={st_system}", "train.epochs=1"], ["system.safetensors", "os.system"]),
    (["strategy=scratch", "strategy.arch_from={st_exec}", "dry_run=true"], ["exec.safetensors", "builtins.exec"]),
    (["hydra.run.dir={evilrun}", "resume=auto", *TINY], ["checkpoints/last.pt", "subprocess.run"]),
    (["resume={evilrun}", *TINY], ["checkpoints/last.pt", "subprocess.run"]),
    (["hydra.run.dir={cfgrun}", "resume=auto", *TINY], ["model.target=subprocess.run", "read from a file"]),
    (["resume={cfgrun}", *TINY], ["model.target=subprocess.run", "trust_targets"]),
    # weights that do not fit the architecture in the same file: refused before anything is built
    ([*FT, "strategy.source={pt_misfit}"], ["misfit.pt do not fit the architecture", "shapes"]),
    ([*FT, "strategy.source={st_misfit}", "dry_run=true"], ["misfit.safetensors do not fit", "blocks.block1"]),
    # a vouched-for network whose parts in the file are malformed: refused as data, not a traceback
    ([*FT, "strategy.source={custom_glue}", "trust_targets=[custom_net.SmallNet]"], ["head input 'os.system'"]),
    ([*FT, "strategy.source={custom_block_type}", "trust_targets=[custom_net.SmallNet]"], ["of type 'linear'"]),
    ([*FT, "strategy.source={custom_path_type}", "trust_targets=[custom_net.SmallNet]"], ["other than strings"]),
    # the review's inputs: a record that vouches for itself, downloads, casts, lora, escapes, saved configs
    (["hydra.run.dir={ctrlrun}", "resume=auto", "compare.scratch=true", "strategy=layerwise", *TINY[1:]],
     ["strategy.arch_from=", "subprocess.run"]),
    ([*FT, "strategy.source={tv_pretrained}", "dry_run=true"], ["tv_pretrained.safetensors", "pretrained=True"]),
    ([*FT, "strategy.source={tv_backbone}"], ["weights_backbone='DEFAULT'", "never downloads"]),
    (["strategy=scratch", "strategy.arch_from={tv_pretrained}", "dry_run=true"], ["pretrained=True"]),
    ([*FT, "strategy.source={tv_int8}"], ["tv_int8.safetensors", "not floating-point", "int8"]),
    ([*FT, "strategy.source={tv_lora}", "dry_run=true"], ["tv_lora.safetensors", "lora target"]),
    ([*FT, "strategy.source={tv_lora_str}"], ["tv_lora_str.safetensors", "lora entry"]),
    ([*FT, "strategy.source={tv_escape}"], ["tv_escape.safetensors", "\\x1b[2J"]),
    (["resume={cfg_env}", *TINY], ["interpolation at dataset.root", "${{oc.env:HOME}}"]),
    (["hydra.run.dir={cfg_interp}", "resume=auto", *TINY], ["interpolation at train.epochs"]),
    (["resume={cfg_missing}", *TINY], ["its 'config' is missing"]),
    (["resume={cfg_string}", *TINY], ["its 'config' is a str"]),
    (["resume={cfg_list}", *TINY], ["its 'config' is a list"]),
    # code named by the config itself must be a network builder, never a builtin such as exec
    (["model=custom", "model.target=builtins.exec", "model.blocks=[a]", "dry_run=true"],
     ["model.target=builtins.exec", "not an nn.Module class or a Python function"]),
    (["model=custom", "model.target=builtins.eval", "model.blocks=[a]", "train.epochs=1"], ["builtins.eval"]),
    (["model=custom", "model.target=os.system", "model.blocks=[a]", "dry_run=true"], ["model.target=os.system"]),
    (["model=custom", "model.target=builtins.print", "model.blocks=[a]", "dry_run=true"], ["builtins.print"]),
    (["model=custom", "model.target=os.environ", "model.blocks=[a]", "dry_run=true"], ["model.target=os.environ"]),
    (["model=custom", "model.target=torch.nn.functional.relu", "model.blocks=[a]", "dry_run=true"],
     ["torch.nn.functional.relu", "could not build the network"]),
]


def _id(args: list[str]) -> str:
    return " ".join(a for a in args if a not in FT and a not in TINY)


@pytest.fixture(scope="session")
def files(tmp_path_factory, good_run) -> dict[str, Path]:  # noqa: F811
    base = tmp_path_factory.mktemp("trust")
    return {**_craft(base, good_run, base / MARKER), **_custom(base), **_reviewed(base, good_run, base / MARKER),
            "marker": base / MARKER}


def _torchvision_file(base: Path, name: str, kwargs: dict | None = None, change=None, spec_edit=None) -> Path:
    """A model.safetensors of a model=torchvision mobilenet_v3_small, altered."""
    from conftest import make_cfg

    from stagetrain.families import build_spec
    from stagetrain.models import StagedModel

    cfg = make_cfg("model=torchvision", "model.arch=mobilenet_v3_small")
    spec = build_spec(cfg.model, (1, 32, 32), 10)
    tensors = {k: v.contiguous() for k, v in StagedModel(spec).state_dict().items()}
    if kwargs:
        spec["shared"]["kwargs"] = {**spec["shared"]["kwargs"], **kwargs}
    if spec_edit:
        spec = spec_edit(spec)
    if change:
        change(tensors)
    save_file(tensors, str(base / f"{name}.safetensors"), metadata={"arch": json.dumps(spec)})
    return base / f"{name}.safetensors"


def _reviewed(base: Path, run: Path, marker: Path) -> dict[str, Path]:
    """The review's inputs: a completed run whose record vouches for the callable its
    model.safetensors names (reached by compare.scratch's control); builtin builders asked for
    downloads; int8 weights; a lora entry that names no layer; saved configs that are not data."""
    made: dict[str, Path] = {}
    ctrl = base / "ctrlrun"
    shutil.copytree(run, ctrl)
    info = json.loads((ctrl / "run.json").read_text())
    info["strategy"], info["config"]["trust_targets"] = "layerwise", ["subprocess.run"]
    (ctrl / "run.json").write_text(json.dumps(info))
    shutil.copy(base / "run.safetensors", ctrl / "model.safetensors")
    made["ctrlrun"] = ctrl
    made["tv_pretrained"] = _torchvision_file(base, "tv_pretrained", {"pretrained": True})
    made["tv_backbone"] = _torchvision_file(base, "tv_backbone", {"weights_backbone": "DEFAULT"})
    made["tv_int8"] = _torchvision_file(base, "tv_int8", change=lambda t: t.update(
        {k: t[k].to(torch.int8) for k in list(t)[:1]}))
    made["tv_lora"] = _torchvision_file(base, "tv_lora", spec_edit=lambda s: {
        **s, "lora": {"rank": 2, "alpha": 2.0, "targets": ["blocks.features_1.block.0.1"]}})
    made["tv_lora_str"] = _torchvision_file(base, "tv_lora_str", spec_edit=lambda s: {
        **s, "lora": {"rank": 2, "alpha": 2.0, "targets": "x"}})
    made["tv_escape"] = _torchvision_file(base, "tv_escape", spec_edit=lambda s: {
        **s, "shared": {**s["shared"], "target": "custom_net.SmallNet\x1b[2J\x1b]0;owned\x07\nFAKE: all good"}})
    for name, config in {"cfg_env": {**info["config"], "dataset": {**info["config"]["dataset"],
                                                                   "root": "${oc.env:HOME}"}},
                         "cfg_missing": None, "cfg_string": "hello", "cfg_list": [1, 2],
                         "cfg_interp": {**info["config"], "train": {**info["config"]["train"], "epochs": "${nope}"}}}.items():
        d = base / name
        shutil.copytree(run, d)
        record = {**info, "status": "stopped", "strategy": "scratch", "config": config}
        if config is None:
            del record["config"]
        (d / "run.json").write_text(json.dumps(record))
        made[name] = d
    return made


def _custom(base: Path) -> dict[str, Path]:
    """Files of a real model=custom run whose target is vouched for, with malformed parts."""
    run = base / "custom"
    assert run_main([*SMALL, *TINY[:2], *TINY[3:], f"hydra.run.dir={run}"]) == 0
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        arch = json.loads(f.metadata()["arch"])
    tensors = load_file(str(run / "model.safetensors"))
    block = arch["blocks"][0]
    out = {}
    for name, spec in {
        "glue": {**arch, "head": {**arch["head"], "input": "os.system"}},
        "block_type": {**arch, "blocks": [{**block, "type": "linear"}, *arch["blocks"][1:]]},
        "path_type": {**arch, "blocks": [{**block, "path": ["stage1"]}, *arch["blocks"][1:]]},
    }.items():
        save_file(tensors, str(base / f"custom_{name}.safetensors"), metadata={"arch": json.dumps(spec)})
        out[f"custom_{name}"] = base / f"custom_{name}.safetensors"
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    return tmp_path


def test_the_table_has_at_least_40_distinct_rows():
    assert len({_id(a) for a, _ in CASES}) == len(CASES) >= 40, len(CASES)


@pytest.mark.parametrize("args,expected", CASES, ids=[_id(a) for a, _ in CASES])
def test_a_file_never_names_code_that_runs(args, expected, files, workdir, capsys):
    marker = files["marker"]
    args = [a.format(**files) for a in args]
    expected = [e.format(**files) for e in expected]
    runs = [files[name] for name in ("evilrun", "cfgrun", "ctrlrun", "cfg_env", "cfg_interp")]
    logs = [(r / "stagetrain.log").read_bytes() for r in runs]
    before = [fingerprint(workdir), *(_unlogged(r) for r in runs)]
    code = run_main([*args, "progress=off", "plots=false", "device=cpu", "device.threads=1"])
    text = capsys.readouterr()
    text = text.out + text.err
    assert not marker.exists() and not (workdir / MARKER).exists(), f"code named by a file ran:\n{text}"
    assert "\x1b" not in text and not any(line.startswith("FAKE") for line in text.splitlines()), text
    assert_refused(code, text, expected)
    assert [fingerprint(workdir), *(_unlogged(r) for r in runs)] == before, "a refused input changed files"
    for run, log in zip(runs, logs, strict=True):  # a refused resume is told in the run's log, appended
        assert (run / "stagetrain.log").read_bytes().startswith(log)


def _unlogged(run: Path) -> dict[str, str]:
    return {k: v for k, v in fingerprint(run).items() if k != "stagetrain.log"}


def test_the_python_api_and_the_report_never_call_what_a_file_names(files, workdir, capsys):
    import stagetrain
    from stagetrain.core.trust import UntrustedCode
    from stagetrain.report import command as report

    with pytest.raises(UntrustedCode, match="subprocess.run") as refused:
        stagetrain.load(files["evilrun"])
    assert "trust_target=" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(UntrustedCode, match="subprocess.run"):
        stagetrain.load(files["evilrun"], trust_target="subprocess.Popen")  # vouching for another callable
    report.main([str(files["evilrun"]), str(files["cfgrun"])])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert not files["marker"].exists()




def test_your_own_network_runs_when_your_config_names_it(tmp_path, workdir, capsys):
    """A run of model=custom: fine-tuning from it needs the target named (trust_targets), a
    resume with the same command line continues it, and the API loads it when vouched."""
    import stagetrain

    src = tmp_path / "custom"
    assert run_main([*SMALL, *TINY[:2], f"hydra.run.dir={src}"]) == 0
    capsys.readouterr()
    ft = ["strategy=finetune", f"strategy.source={src}", "train.epochs=1", "dataset.max_train=64", *TINY[3:]]
    assert run_main([*ft, f"hydra.run.dir={tmp_path / 'refused'}"]) != 0
    assert "custom_net.SmallNet" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert run_main([*ft, "trust_targets=[custom_net.SmallNet]", f"hydra.run.dir={tmp_path / 'ft'}"]) == 0
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["status"] == "completed"
    info = json.loads((src / "run.json").read_text())  # the custom run, as if stopped mid-way
    (src / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    assert run_main([*SMALL, *TINY[:2], f"hydra.run.dir={src}", "resume=auto"]) == 0
    with pytest.raises(StagetrainError, match="custom_net.SmallNet"):
        stagetrain.load(src)
    run = stagetrain.load(src, trust_target="custom_net.SmallNet")
    x = torch.zeros(2, 1, 8, 8)
    assert run.model(x).shape == (2, 10)

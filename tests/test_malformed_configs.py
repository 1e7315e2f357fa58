"""Malformed configs: every bad override or config file is refused with a short message that
names the key (and the nearest valid key or option), a non-zero exit, no traceback, nothing
written.

Most cases run in-process through the real ``stagetrain.app.cli.main`` (a fresh interpreter
per case would spend its time importing Python, not checking configs); a representative
subset also runs through the installed console script.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from hydra.core.global_hydra import GlobalHydra

import stagetrain.app.cli

# Config files a user passes with --config-dir / --config-name (written into the cwd).
USER_FILES = {
    "myconf/model/broken.yaml": "defaults:\n  - /schema/model/mlp@_here_\n  - _self_\nname: mlp\nwidths: [7\n",
    "myconf/model/typo.yaml": "defaults:\n  - /schema/model/mlp@_here_\n  - _self_\nname: mlp\nwidthz: [7]\n",
    "myconf/model/badtype.yaml": "defaults:\n  - /schema/model/mlp@_here_\n  - _self_\nname: mlp\nbn: maybe\n",
    "myconf/dataset/noname.yaml": "defaults:\n  - /schema/dataset/dataset@_here_\n  - _self_\nroot: /tmp\n",
    "myconf/model/tabs.yaml": "defaults:\n  - /schema/model/mlp@_here_\n  - _self_\nname: mlp\nwidths:\n\t- 7\n",
    "myconf/experiment/broken.yaml": "# @package _global_\ntrain:\n  epochs: 3\n   batch_size: 4\n",
    "myconf/experiment/quote.yaml": "# @package _global_\noptim:\n  name: 'adam\n",
    "myconf/experiment/typo.yaml": "# @package _global_\ntrian:\n  epochs: 3\n",
    "myconf/experiment/nested_typo.yaml": "# @package _global_\noptim:\n  lrr: 0.1\n",
    "myconf/experiment/badvalue.yaml": "# @package _global_\noptim:\n  lr: -0.5\n",
    "myconf/experiment/badtype.yaml": "# @package _global_\ntrain:\n  epochs: many\n",
    "myconf/broken_main.yaml": "defaults:\n  - config\n  - _self_\ntrain:\n  epochs: : 3\n",
    "myconf/typo_main.yaml": "defaults:\n  - config\n  - _self_\nsched:\n  nmae: step\n",
    "myconf/badenum_main.yaml": "defaults:\n  - config\n  - _self_\nsched:\n  name: cosin\n",
    "src/run.json": "{}\n",  # an existing path for strategy.source (validate only checks it exists)
}
CD = ["--config-dir", "myconf"]

# (command line, texts the output must contain): the first text names the key or file.
CASES: list[tuple[list[str], list[str]]] = [
    # ---- unknown keys, top-level and nested: the nearest valid key
    (["trian.epochs=3"], ["'trian.epochs'", "Did you mean 'train.epochs'?"]),
    (["train.epoch=3"], ["'train.epoch'", "Did you mean 'train.epochs'?"]),
    (["train.batchsize=32"], ["'train.batchsize'", "Did you mean 'train.batch_size'?"]),
    (["train.eval_batch=8"], ["'train.eval_batch'", "Did you mean 'train.eval_batch_size'?"]),
    (["train.pateince=3"], ["'train.pateince'", "Did you mean 'train.patience'?"]),
    (["optim.lrr=0.1"], ["'optim.lrr'", "Did you mean 'optim.lr'?"]),
    (["optim.weight_decy=0.1"], ["'optim.weight_decay'"]),
    (["optim.momentun=0.5"], ["'optim.momentun'", "Did you mean 'optim.momentum'?"]),
    (["optim.learning_rate=0.1"], ["'optim.learning_rate'", "Valid keys of optim: name, lr"]),
    (["sched.nme=step"], ["'sched.nme'", "Did you mean 'sched.name'?"]),
    (["sched.warmup=2"], ["'sched.warmup'", "Did you mean 'sched.warmup_epochs'?"]),
    (["sched.gama=0.5"], ["'sched.gama'", "Did you mean 'sched.gamma'?"]),
    (["model.widht=[3]"], ["'model.widht'", "Did you mean 'model.widths'?"]),
    (["model.activaton=tanh"], ["'model.activaton'", "Did you mean 'model.activation'?"]),
    (["model.dropuot=0.1"], ["'model.dropuot'", "Did you mean 'model.dropout'?"]),
    (["model=cnn", "model.chanels=[4]"], ["'model.chanels'", "Did you mean 'model.channels'?"]),
    (["model=cnn", "model.widths=[4]"], ["'model.widths'", "It is a key of model=mlp, not of model=cnn."]),
    (["model.channels=[4]"], ["'model.channels'", "It is a key of model=cnn, not of model=mlp."]),
    (["dataset.labelled_fraction=0.5"], ["'dataset.labelled_fraction'", "Did you mean 'dataset.labeled_fraction'?"]),
    (["dataset.val_frac=0.2"], ["'dataset.val_frac'", "Did you mean 'dataset.val_fraction'?"]),
    (["dataset.clases=[0,1]"], ["'dataset.clases'", "Did you mean 'dataset.classes'?"]),
    (["dataset.rot=/tmp"], ["'dataset.rot'", "Did you mean 'dataset.root'?"]),
    (["dataset=synthetic", "dataset.n_trian=10"], ["'dataset.n_trian'", "Did you mean 'dataset.n_train'?"]),
    (["dataset.n_train=10"], ["'dataset.n_train'", "It is a key of dataset=synthetic"]),
    (["device.precison=bf16"], ["'device.precison'", "Did you mean 'device.precision'?"]),
    (["device.thread=2"], ["'device.thread'", "Did you mean 'device.threads'?"]),
    (["checkpoint.every_step=10"], ["'checkpoint.every_step'", "Did you mean 'checkpoint.every_steps'?"]),
    (["logger.tensorbord=true"], ["'logger.tensorbord'", "Did you mean 'logger.tensorboard'?"]),
    (["sed=1"], ["'sed'", "Did you mean 'seed'?"]),
    (["+sed=1"], ["'sed'", "Did you mean 'seed'?"]),  # '+' adds a key: refused all the same
    (["+foo=1"], ["'foo'", "stagetrain reads only"]),
    (["dryrun=true"], ["'dryrun'", "Did you mean 'dry_run'?"]),
    (["progres=off"], ["'progres'", "Did you mean 'progress'?"]),
    (["plot=false"], ["'plot'", "Did you mean 'plots'?"]),
    (["resum=auto"], ["'resum'", "Did you mean 'resume'?"]),
    (["stratgy=grow"], ["'stratgy'", "Did you mean 'strategy'?"]),
    (["train.epochs.max=3"], ["'train.epochs.max'", "'train.epochs' is a value"]),
    (["~trian"], ["'trian'", "Did you mean 'train'?"]),
    (["strategy.objectve=denoising"], ["'strategy.objectve'", "Did you mean 'strategy.objective'?"]),
    (["strategy.epoch_per_layer=2"], ["'strategy.epoch_per_layer'", "Did you mean 'strategy.epochs_per_layer'?"]),
    (["strategy.finetune.epoch=3"], ["'strategy.finetune.epoch'", "Did you mean 'strategy.finetune.epochs'?"]),
    (["strategy.finetune.lrr=0.1"], ["'strategy.finetune.lrr'", "Did you mean 'strategy.finetune.lr'?"]),
    (["strategy.fine_tune.epochs=3"], ["'strategy.fine_tune.epochs'", "Did you mean 'strategy.finetune.epochs'?"]),
    (["strategy=grow", "strategy.width=[[4]]"], ["'strategy.width'", "Did you mean 'strategy.widths'?"]),
    (["strategy=grow", "strategy.triger=plateau"], ["'strategy.triger'", "Did you mean 'strategy.trigger'?"]),
    (["strategy=grow", "strategy.objective=supervised"], ["'strategy.objective'", "It is a key of strategy=layerwise"]),
    (["strategy=scratch", "strategy.epochs_per_layer=2"], ["'strategy.epochs_per_layer'", "strategy=layerwise"]),
    (["strategy=finetune", "strategy.lora.rnk=8"], ["'strategy.lora.rnk'", "Did you mean 'strategy.lora.rank'?"]),
    (["strategy=finetune", "strategy.pretrain.enable=true"], ["'strategy.pretrain.enable'", "Did you mean 'strategy.pretrain.enabled'?"]),
    (["strategy=finetune", "strategy.mod=full"], ["'strategy.mod'", "Did you mean 'strategy.mode'?"]),
    (["-m", "seed=0,1", "trian.epochs=1"], ["'trian.epochs'", "Did you mean 'train.epochs'?"]),
    (["--cfg", "job", "optim.lrr=0.1"], ["'optim.lrr'", "Did you mean 'optim.lr'?"]),
    # ---- near-miss group options: the closest option and the list
    (["strategy=layerwize"], ["strategy=layerwize", "Did you mean 'layerwise'?", "Options: finetune, grow, layerwise, scratch"]),
    (["strategy=scrath"], ["strategy=scrath", "Did you mean 'scratch'?"]),
    (["strategy=grown"], ["strategy/grown", "Did you mean 'grow'?"]),
    (["strategy=fine_tune"], ["strategy=fine_tune", "Did you mean 'finetune'?"]),
    (["dataset=mnits"], ["dataset=mnits", "Did you mean 'mnist'?"]),
    (["dataset=fashion-mnist"], ["dataset=fashion-mnist", "Did you mean 'fashion_mnist'?"]),
    (["dataset=cifar"], ["dataset=cifar", "Did you mean 'cifar10'?"]),
    (["dataset=digit"], ["dataset=digit", "Did you mean 'digits'?"]),
    (["dataset=synthtic"], ["dataset=synthtic", "Did you mean 'synthetic'?"]),
    (["model=mpl"], ["model=mpl", "Options: cnn, custom, hf, mlp, resnet, torchvision, transformer"]),
    (["model=cnnn"], ["model=cnnn", "Did you mean 'cnn'?"]),
    (["device=cpuu"], ["device=cpuu", "Did you mean 'cpu'?"]),
    (["device=gpu"], ["device=gpu", "Options: auto, cpu, cuda"]),
    (["hydra/launcher=joblb"], ["hydra/launcher=joblb", "Did you mean 'joblib'?"]),
    (["-m", "strategy=scratch,layerwize"], ["strategy=layerwize", "Did you mean 'layerwise'?"]),
    (CD + ["model=tiny"], ["model=tiny", "Options: badtype, broken, cnn, custom, hf, mlp, resnet, tabs, torchvision, transformer, typo"]),
    # ---- wrong types
    (["train.epochs=abc"], ["train.epochs=abc", "expected an integer"]),
    (["train.epochs=1.5"], ["train.epochs=1.5", "expected an integer"]),
    (["train.epochs=[1]"], ["train.epochs=[1]", "expected an integer"]),
    (["train.batch_size=big"], ["train.batch_size=big", "expected an integer"]),
    (["train.patience=x"], ["train.patience=x", "expected an integer"]),
    (["optim.lr=[1]"], ["optim.lr=[1]", "expected a number"]),
    (["optim.lr=abc"], ["optim.lr=abc", "expected a number"]),
    (["optim.lr={a:1}"], ["optim.lr=", "not valid"]),
    (["dataset.download=maybe"], ["dataset.download=maybe", "expected true or false"]),
    (["model.bn=maybe"], ["model.bn=maybe", "expected true or false"]),
    (["model.widths=[a,b]"], ["model.widths", "expected an integer"]),
    (["dataset.classes=[0,x]"], ["dataset.classes", "expected an integer"]),
    (["seed=abc"], ["seed=abc", "expected an integer"]),
    (["seed=1.5"], ["seed=1.5", "expected an integer"]),
    (["dry_run=sure"], ["dry_run=sure", "expected true or false"]),
    (["device.threads=two"], ["device.threads=two", "expected an integer"]),
    (["checkpoint.every_steps=ten"], ["checkpoint.every_steps=ten", "expected an integer"]),
    (["strategy.epochs_per_layer=abc"], ["strategy.epochs_per_layer=abc", "expected an integer"]),
    (["strategy=grow", "strategy.epochs_per_stage=1.5"], ["strategy.epochs_per_stage=1.5", "expected an integer"]),
    (["strategy=finetune", "strategy.lora.rank=big"], ["strategy.lora.rank=big", "expected an integer"]),
    (["-m", "train.epochs=1,abc"], ["train.epochs=abc", "expected an integer"]),
    # ---- out-of-range values
    (["optim.lr=-0.1"], ["optim.lr=-0.1", "out of range"]),
    (["optim.lr=0"], ["optim.lr=0", "out of range"]),
    (["optim.weight_decay=-1"], ["optim.weight_decay", "out of range"]),
    (["train.batch_size=0"], ["train.batch_size=0", "out of range"]),
    (["train.epochs=-3"], ["train.epochs=-3", "out of range"]),
    (["train.eval_batch_size=0"], ["train.eval_batch_size=0", "out of range"]),
    (["train.patience=0"], ["train.patience=0", "out of range"]),
    (["dataset.labeled_fraction=1.5"], ["dataset.labeled_fraction=1.5", "out of range"]),
    (["dataset.labeled_fraction=0"], ["dataset.labeled_fraction=0", "out of range"]),
    (["dataset.val_fraction=0"], ["dataset.val_fraction=0", "out of range"]),
    (["dataset.val_fraction=1.2"], ["dataset.val_fraction=1.2", "out of range"]),
    (["dataset.max_train=0"], ["dataset.max_train=0", "out of range"]),
    (["model.dropout=1.0"], ["model.dropout=1.0", "out of range"]),
    (["model.dropout=-0.1"], ["model.dropout=-0.1", "out of range"]),
    (["model.widths=[]"], ["model.widths=[]", "positive width"]),
    (["model.widths=[64,-1]"], ["model.widths=[64, -1]", "positive width"]),
    (["sched.step_size=0"], ["sched.step_size=0", "out of range"]),
    (["sched.warmup_epochs=-1"], ["sched.warmup_epochs=-1", "out of range"]),
    (["checkpoint.every_steps=-5"], ["checkpoint.every_steps=-5", "out of range"]),
    (["device.threads=-1"], ["device.threads=-1", "out of range"]),
    (["seed=-1"], ["seed=-1", "out of range"]),
    (["dataset.classes=[1]"], ["dataset.classes=[1]", "at least two distinct"]),
    (["dataset.classes=[2,2]"], ["dataset.classes=[2, 2]", "at least two distinct"]),
    (["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.classes=[1]"],
     ["strategy.pretrain.classes=[1]", "at least two distinct"]),
    (["model=mlp", "model.bn=true", "train.batch_size=1"], ["model.bn=true", "or model.bn=false"]),
    (["model=resnet", "train.batch_size=1"], ["model=resnet: its batch normalization", "train.batch_size>=2."]),
    (["dataset=synthetic", "dataset.num_classes=1"], ["dataset.num_classes=1", "out of range"]),
    (["dataset=synthetic", "dataset.shape=[1,2]"], ["dataset.shape=[1, 2]", "[channels, height, width]"]),
    (["model=cnn", "model.kernel=0"], ["model.kernel=0", "out of range"]),
    (["strategy.noise=[0.1,1.5]"], ["strategy.noise", "[0, 1)"]),
    (["strategy.epochs_per_layer=0"], ["strategy.epochs_per_layer=0", "out of range"]),
    (["strategy.cd_k=0"], ["strategy.cd_k=0", "out of range"]),
    (["strategy=grow", "strategy.epochs_per_stage=0"], ["strategy.epochs_per_stage=0", "out of range"]),
    (["strategy=grow", "strategy.data_fractions=[0.5,2]"], ["strategy.data_fractions", "(0, 1]"]),
    (["strategy=scratch", "strategy.epochs=0"], ["strategy.epochs=0", "out of range"]),
    (["strategy=finetune", "strategy.source=src", "strategy.lora.rank=0"], ["strategy.lora.rank", ">= 1"]),
    (CD + ["experiment=badvalue"], ["optim.lr=-0.5", "out of range"]),
    # ---- bad enum values: the closest valid value
    (["optim.name=adamm"], ["optim.name='adamm'", "Did you mean 'adam'?"]),
    (["optim.name=rmsprop"], ["optim.name='rmsprop'", "choose one of sgd, adam, adamw"]),
    (["sched.name=cosin"], ["sched.name='cosin'", "Did you mean 'cosine'?"]),
    (["sched.name=linear"], ["sched.name='linear'", "constant, cosine, onecycle, step"]),
    (["model.activation=relux"], ["model.activation='relux'", "Did you mean 'relu'?"]),
    (["model.activation=swish"], ["model.activation='swish'", "choose one of"]),
    (["device.precision=fp16"], ["device.precision='fp16'", "choose one of fp32, bf16"]),
    (["device.name=tpu"], ["device.name='tpu'", "auto, cpu, cuda"]),
    (["progress=fancy"], ["progress='fancy'", "auto, rich, plain, off"]),
    (["dataset.name=svhn"], ["dataset.name='svhn'", "choose one of"]),
    (["strategy.objective=sparse"], ["strategy.objective='sparse'", "choose one of"]),
    (["strategy.objective=autoencoders"], ["strategy.objective='autoencoders'", "Did you mean 'autoencoder'?"]),
    (["strategy.cache=maybe"], ["strategy.cache='maybe'", "auto, on, off"]),
    (["strategy.cache_dtype=fp16"], ["strategy.cache_dtype='fp16'", "choose one of fp32, bf16"]),
    (["strategy.optimizer=adan"], ["strategy.optimizer='adan'", "Did you mean 'adam'?"]),
    (["strategy=grow", "strategy.trigger=plateu"], ["strategy.trigger='plateu'", "Did you mean 'plateau'?"]),
    (["strategy=grow", "strategy.op=net2wider"], ["strategy.op='net2wider'", "Did you mean 'net2net'?"]),
    (["strategy=grow", "strategy.deepen=identiy"], ["strategy.deepen='identiy'", "Did you mean 'identity'?"]),
    (["strategy=grow", "strategy.optimizer_state=keep"], ["strategy.optimizer_state='keep'", "reset, map"]),
    (["strategy=finetune", "strategy.source=src", "strategy.mode=lineal_probe"], ["strategy.mode='lineal_probe'", "Did you mean 'linear_probe'?"]),
    (["strategy=finetune", "strategy.source=src", "strategy.bn=frozen"], ["strategy.bn='frozen'", "eval, train_stats, train_affine"]),
    (["strategy=finetune", "strategy.source=src", "strategy.head=old"], ["strategy.head='old'", "new, reuse"]),
    (["strategy=finetune", "strategy.source=src", "strategy.source_checkpoint=worst"], ["strategy.source_checkpoint='worst'", "best, last or stage-<k>"]),
    (["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.objective=rbm"], ["strategy.pretrain.objective='rbm'", "supervised, autoencoder, denoising"]),
    (["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.dataset=mnits"], ["strategy.pretrain.dataset='mnits'", "Did you mean 'mnist'?"]),
    (CD + ["--config-name", "badenum_main"], ["sched.name='cosin'", "Did you mean 'cosine'?"]),
    # ---- missing required values
    (["strategy=finetune"], ["strategy=finetune needs strategy.source"]),
    (["strategy=finetune", "strategy.source=/nonexistent/run"], ["strategy.source=/nonexistent/run does not exist"]),
    (["dataset.name=???"], ["dataset.name has no value", "dataset.name=<value>"]),
    (["~strategy"], ["strategy has no value", "one of finetune, grow, layerwise, scratch"]),
    (["~model"], ["model has no value", "one of cnn, custom, hf, mlp, resnet, torchvision, transformer"]),
    (["model.widths=???"], ["model.widths has no value"]),
    (CD + ["dataset=noname"], ["dataset.name has no value"]),
    (["resume="], ["resume= is empty", "resume=auto"]),
    (["hydra.run.dir="], ["hydra.run.dir= is empty"]),
    (["resume=/nonexistent/run"], ["resume=/nonexistent/run", "no run.json"]),
    (["resume=src/run.json"], ["resume=src/run.json", "no run.json"]),
    # ---- YAML syntax errors and bad keys / types in the user's own config files
    (CD + ["model=broken"], ["YAML syntax error in", "model/broken.yaml, line 6"]),
    (CD + ["model=tabs"], ["YAML syntax error in", "model/tabs.yaml, line 6"]),
    (CD + ["experiment=broken"], ["YAML syntax error in", "experiment/broken.yaml, line 4"]),
    (CD + ["experiment=quote"], ["YAML syntax error in", "experiment/quote.yaml"]),
    (CD + ["--config-name", "broken_main"], ["YAML syntax error in", "broken_main.yaml, line 5"]),
    (CD + ["model=typo"], ["'model.widthz' in config 'model/typo'", "Did you mean 'model.widths'?"]),
    (CD + ["experiment=typo"], ["'trian' in config 'experiment/typo'", "Did you mean 'train'?"]),
    (CD + ["experiment=nested_typo"], ["'optim.lrr' in config 'experiment/nested_typo'", "Did you mean 'optim.lr'?"]),
    (CD + ["--config-name", "typo_main"], ["'sched.nmae'", "Did you mean 'sched.name'?"]),
    (CD + ["model=badtype"], ["model.bn is not valid in config 'model/badtype'", "expected true or false"]),
    (CD + ["experiment=badtype"], ["train.epochs is not valid in config 'experiment/badtype'", "expected an integer"]),
    # ---- incompatible combinations
    (["model=cnn", "dataset=synthetic", "dataset.shape=[20]"], ["model=cnn needs image inputs"]),
    (["strategy.objective=rbm"], ["strategy.objective=rbm", "model.activation=sigmoid"]),
    (["strategy.objective=rbm", "model.activation=sigmoid", "model.bn=true"], ["strategy.objective=rbm", "model.bn=false"]),
    (["strategy.objective=rbm", "model=cnn", "model.activation=sigmoid"], ["strategy.objective=rbm", "model=mlp"]),
    (["strategy=grow", "model.activation=tanh", "strategy.widths=[[16],[16,16]]"], ["strategy.deepen=identity", "residual_zero"]),
    (["strategy=grow", "strategy.trigger=flops_share"], ["strategy.trigger=flops_share needs strategy.flop_budget"]),
    (["strategy=grow", "strategy.widths=[[64],[16]]"], ["strategy.widths", "growth never shrinks"]),
    (["strategy=grow", "strategy.deepen=residual_zero", "strategy.widths=[[16],[16,16],[32,32]]"], ["strategy.deepen=residual_zero", "width"]),
    (["strategy=grow", "strategy.widths=abc"], ["strategy.widths=abc", "one list of widths per stage"]),
    (["strategy=grow", "strategy.target='val/accuracy>=0.5'"], ["strategy.target", "val/acc"]),
    (["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.source=src"], ["strategy.source and strategy.pretrain.enabled=true exclude each other"]),
    (["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.head=reuse"], ["strategy.head=reuse needs a source run"]),
    (["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.dataset=cifar10"], ["strategy.pretrain.dataset=cifar10", "must match"]),
    # ---- Hydra's grammar: which override, why, and the fix (quote it)
    (["model.widths=[64"], ["model.widths=[64", "'[' opened but not closed", '"model.widths=[64,32]"']),
    (["optim.lr=1e-3,"], ["optim.lr=1e-3,", "quote it twice", "\"optim.lr='1e-3,'\""]),
    (["strategy=grow", "strategy.target=val/acc>=0.9"], ["strategy.target=val/acc>=0.9", "reserves '=', '<' and '>'",
                                                         "\"strategy.target='val/acc>=0.9'\""]),
    # the same typed without quotes: the shell cut it at '>' (and wrote a file '=0.9')
    (["strategy=grow", "strategy.target=val/acc"], ["strategy.target=val/acc has no comparison", "redirections",
                                                    "\"strategy.target='val/acc>=0.9'\""]),
]

# Through the real console script (a fresh process each), timed: one per kind of failure.
SUBPROCESS = [
    ["trian.epochs=3"],
    ["model.widths=[64"],
    ["optim.lrr=0.1"],
    ["strategy=layerwize"],
    ["dataset=mnits"],
    ["train.epochs=abc"],
    ["optim.lr=-0.1"],
    ["optim.name=adamm"],
    ["strategy=finetune"],
    CD + ["model=broken"],
    ["strategy.objective=rbm"],
    ["resume="],
]


def _id(args: list[str]) -> str:
    return " ".join(args)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cwd holding only the user's config files."""
    for name, text in USER_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    return tmp_path


FLAGS_WITH_VALUE = {"--config-dir", "--config-name", "--cfg"}


def _flags(args: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if a.startswith("-"):
            out.append(a)
        elif i and args[i - 1] in FLAGS_WITH_VALUE:
            out.append(a)
    return out


def _overrides(args: list[str]) -> list[str]:
    return [a for i, a in enumerate(args)
            if not a.startswith("-") and not (i and args[i - 1] in FLAGS_WITH_VALUE)]


def _run_in_process(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        # dry_run first (an override of it in the case wins): a case that slipped through
        # prints a plan and exits 0 instead of training
        stagetrain.app.cli.main([*_flags(args), "dry_run=true", "progress=off", *_overrides(args)])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_refused(code: int, out: str, expected: list[str], root: Path) -> None:
    assert code != 0, out
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    assert "Traceback" not in out, out
    assert sum(expected[0] in line for line in out.splitlines()) == 1, f"printed more than once:\n{out}"
    assert len(out) < 600, f"not a short message:\n{out}"
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and str(p.relative_to(root)) not in USER_FILES)
    assert left == [], f"files left behind: {left}"
    assert not (root / "outputs").exists(), "a run directory was created"
    assert not (root / ".hydra").exists()


def test_the_table_has_at_least_100_cases():
    assert len(CASES) >= 100
    assert len({_id(a) for a, _ in CASES}) == len(CASES), "duplicate cases"


@pytest.mark.parametrize("args,expected", CASES, ids=[_id(a) for a, _ in CASES])
def test_malformed_config_is_refused_in_process(args, expected, workdir, capsys):
    code, out = _run_in_process(args, capsys)
    _assert_refused(code, out, expected, workdir)


@pytest.mark.parametrize("args", SUBPROCESS, ids=[_id(a) for a in SUBPROCESS])
def test_malformed_config_is_refused_by_the_console_script(args, workdir):
    expected = next(e for a, e in CASES if a == args)
    # how fast a refusal is, is a benchmark's question (benchmarks/startup.py), not a unit
    # test's: timed assertions here failed on a loaded machine
    proc = run_cli(*args, "progress=off", cwd=workdir, timeout=60)
    _assert_refused(proc.returncode, proc.stdout + proc.stderr, expected, workdir)
    assert proc.returncode == 1


@pytest.mark.parametrize("args", [["model.widths=[64"], ["strategy=grow", "strategy.target=val/acc"],
                                  ["optim.lr=-0.1"], ["train.epochs=abc"]], ids=_id)
def test_grammar_errors_and_bad_values_are_refused_by_the_console_script(args, workdir):
    """Refused with one ``Error:`` paragraph and exit 1 (how fast is a benchmark's question,
    not a unit test's: a timed assertion here failed on a loaded CI machine)."""
    proc = run_cli(*args, cwd=workdir, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr

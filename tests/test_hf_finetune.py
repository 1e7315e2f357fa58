"""model=hf fine-tuning (issue 26, models): every finetune mode from a model=hf source run
(LoRA targets by transformers' own module names), the equal-FLOPs control and tuning, from the
command line; a language-model source fine-tuned into a classifier; in-run mlm pretraining of a
BERT and lm pretraining of a LLaMA; bit-identical resume across pretrain -> fine-tune; unmerged
LoRA adapters exported in PEFT's format and loaded by ``peft`` with stagetrain's logits.
Offline, tiny configs on the fortunes collection (skipped with a reason when it is absent)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import DATA_ROOT, make_cfg, run_cli

from stagetrain.families.hf import config as family
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel
from stagetrain.models.hf_io import export_pretrained
from stagetrain.runs.runner import train

FORTUNES = DATA_ROOT / "text" / "fortunes"
needs_fortunes = pytest.mark.skipif(
    not (FORTUNES / "zippy").is_file(),
    reason=f"needs the fortunes collection, not found in {FORTUNES}: put it in ../shared/data/text/fortunes beside "
           "the repository, or set STAGETRAIN_DATA")
TINY = "hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64"
LLAMA = f"model.config={{model_type: llama, {TINY}}}"
BERT = f"model.config={{model_type: bert, {TINY}, max_position_embeddings: 32}}"
DATA = ["dataset=fortunes", f"dataset.root={DATA_ROOT}", "dataset.max_train=64", "dataset.max_len=16",
        "train.epochs=2", "train.batch_size=16", "device.threads=1", "plots=false", "progress=off"]
CLASSES = 43  # fortunes categories


def _params(model: StagedModel, *prefixes: str, leaf: str = "") -> int:
    return sum(p.numel() for k, p in model.named_parameters() if k.startswith(prefixes or "") and k.endswith(leaf))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """model=hf source runs by name: a LLaMA and a BERT classifying fortunes, a LLaMA language
    model, a BERT masked language model."""
    root = tmp_path_factory.mktemp("hf_sources")
    args = {"llama": [LLAMA], "bert": [BERT], "llama_lm": [LLAMA, "dataset.task=lm"],
            "bert_mlm": [BERT, "dataset.task=lm"]}

    def source(name: str):  # trained once, when a test first asks for it
        if not (root / name / "run.json").is_file():
            info = train(make_cfg("model=hf", *args[name], *DATA, "strategy=scratch"), root / name)
            assert info["status"] == "completed"
        return root / name
    return source


def _source_model(sources, name: str) -> StagedModel:
    return StagedModel(torch.load(sources(name) / "checkpoints" / "last.pt", weights_only=True)["arch"])


def _lora(m: StagedModel, targets: tuple[str, ...], rank: int = 4) -> int:
    return sum(rank * (lin.in_features + lin.out_features) for k, lin in m.named_modules()
               if k.startswith("blocks.") and k.rpartition(".")[2] in targets)


# (source, extra arguments, trainable parameters of each stage as a function of the source model)
MODES = {
    "full": ("llama", ["strategy.mode=full"], lambda m: [_params(m)]),
    "linear_probe": ("llama", ["strategy.mode=linear_probe"], lambda m: [_params(m, "head.")]),
    "partial": ("llama", ["strategy.mode=partial", "strategy.freeze_blocks=1"],
                lambda m: [_params(m, "blocks.block2.", "head.")]),
    "add_layers": ("llama", ["strategy.mode=add_layers"], lambda m: [_params(m, "blocks.block2.", "head.")]),
    "gradual_unfreeze": ("llama", ["strategy.mode=gradual_unfreeze", "strategy.epochs=4"],
                         lambda m: [_params(m, "head."), _params(m, "head.", "blocks.block2."),
                                    _params(m, "head.", "blocks."), _params(m)]),
    "discriminative_lrs": ("llama", ["strategy.mode=full", "strategy.lr_decay=0.5"], lambda m: [_params(m)]),
    "lp_ft": ("llama", ["strategy.mode=lp_ft"], lambda m: [_params(m, "head."), _params(m)]),
    "bitfit": ("bert", ["strategy.mode=bitfit"],
               lambda m: [_params(m, "stem.", "blocks.", leaf="bias") + _params(m, "head.")]),
    "lora_llama": ("llama", ["strategy.mode=lora", "strategy.lora.targets=[q_proj,v_proj]"],
                   lambda m: [_lora(m, ("q_proj", "v_proj")) + _params(m, "head.")]),
    "lora_bert": ("bert", ["strategy.mode=lora", "strategy.lora.targets=[query,value]"],
                  lambda m: [_lora(m, ("query", "value")) + _params(m, "head.")]),
}


PROBED = ("linear_probe", "lp_ft", "gradual_unfreeze")  # a head-only L-BFGS probe stage first


@needs_fortunes
@pytest.mark.full  # ten command-line runs (about two minutes on 2 busy cores): `pytest --full`
@pytest.mark.parametrize("mode", list(MODES))
def test_every_finetune_mode_runs_on_a_hf_source_from_the_command_line(mode, sources, tmp_path):
    source, args, trainable = MODES[mode]
    model = _source_model(sources, source)
    proc = run_cli("model=hf", LLAMA if source == "llama" else BERT, *DATA, "strategy=finetune",
                   f"strategy.source={sources(source)}", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "completed" and info["source"]["path"].startswith(str(sources(source)))
    assert [s["trainable_params"] for s in info["stages"]] == trainable(model)
    assert all(s["objective"] == "supervised" for s in info["stages"])
    # an L-BFGS probe on 64 texts of 43 classes overfits (validation loss ~30); the others stay near ln 43 = 3.76
    assert 0 <= info["final"]["test/acc"] <= 1 and 0 < info["final"]["val/loss"] < (100 if mode in PROBED else 6)
    from safetensors import safe_open

    final = json.loads(safe_open(str(tmp_path / "run" / "model.safetensors"), "pt").metadata()["arch"])
    assert len(final["blocks"]) == 2 + (mode == "add_layers") and "lora" not in final  # lora merged at the end
    if mode == "discriminative_lrs":
        assert info["plan"]["stages"][0]["lr_scale"] == {"stem": 0.125, "block1": 0.25, "block2": 0.5, "head": 1.0}
    exported = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
    assert exported["architectures"][0].endswith("ForSequenceClassification")
    assert exported["num_hidden_layers"] == len(final["blocks"])


@needs_fortunes
@pytest.mark.full  # three command-line runs, one with its control, one a search of two trials: `pytest --full`
def test_the_equal_flops_control_and_tuning_run_on_a_hf_finetune(sources, tmp_path):
    base = ["model=hf", LLAMA, *DATA, "strategy=finetune", f"strategy.source={sources('llama')}",
            "strategy.mode=lora", "strategy.lora.targets=[q_proj,v_proj]"]
    proc = run_cli(*base, "compare.scratch=true", f"hydra.run.dir={tmp_path / 'ctl'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "ctl" / "run.json").read_text())
    control = json.loads((tmp_path / "ctl" / "control" / "run.json").read_text())
    assert info["control"]["status"] == "completed" and control["strategy"] == "scratch"
    stage = control["stages"][0]
    assert 0 <= control["flops"] - info["flops"] < stage["flops"] / stage["steps"] + 1e-6 * info["flops"]
    proc = run_cli(*base, "tune.lr=[0.0001,0.003]", f"hydra.run.dir={tmp_path / 'tune'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tune = json.loads((tmp_path / "tune" / "run.json").read_text())["tune"]
    assert [t["optim.lr"] for t in tune["search"]] == [0.0001, 0.003] and tune["trials"] == 2
    assert tune["selected"]["optim.lr"] == max(tune["search"], key=lambda t: t["val/acc"])["optim.lr"]


@needs_fortunes
@pytest.mark.parametrize("source", ["llama_lm", "bert_mlm"])
def test_a_language_model_source_becomes_a_classifier(source, sources, tmp_path):
    """A LLaMA trained on next tokens (a BERT on masked tokens), fine-tuned on categories: the
    family's as_classifier puts its stem and layers (causal; the mask token's row) under the
    model's own sequence classifier (score at the last token; pooler + classifier on [CLS])."""
    model = LLAMA if source == "llama_lm" else BERT
    info = train(make_cfg("model=hf", model, *DATA, "strategy=finetune", f"strategy.source={sources(source)}",
                          "strategy.mode=full"), tmp_path / "run")
    assert info["status"] == "completed" and info["stages"][0]["objective"] == "supervised"
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert arch["head"]["task"] == "classification" and arch["head"]["out"] == CLASSES
    assert all(b["causal"] == (source == "llama_lm") and b["padding"] for b in arch["blocks"])
    assert ("mask_id" in arch["stem"]) == (source == "bert_mlm")
    body = {k: v for k, v in torch.load(sources(source) / "checkpoints" / "best.pt",
                                        weights_only=True)["model"].items() if not k.startswith("head.")}
    missing = StagedModel(arch).load_state_dict(body, strict=False).missing_keys  # the source's body fits
    assert missing and all(k.startswith("head.") for k in missing)  # only the classifier head is new
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "hf",
                                                                           local_files_only=True)
    assert back.config.num_labels == CLASSES


@needs_fortunes
@pytest.mark.parametrize(("model", "objective"), [(BERT, "mlm"), (LLAMA, "lm")])
def test_in_run_text_pretraining_then_classification(model, objective, tmp_path):
    """BERT: masked tokens (a mask token row added, id = the vocabulary size); LLaMA: next tokens;
    then the classifier trains on the labels. The wrong objective for the architecture is refused."""
    info = train(make_cfg("model=hf", model, *DATA, "strategy=finetune", "strategy.pretrain.enabled=true",
                          f"strategy.pretrain.objective={objective}", "strategy.pretrain.epochs=1"), tmp_path / "run")
    assert info["status"] == "completed"
    assert [s["objective"] for s in info["stages"]] == [objective, "supervised"]
    assert 4.0 < info["stages"][0]["final"]["val/loss"] < 6.5  # ~ln(257): a token loss, not a copied token
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert ("mask_id" in arch["stem"]) == (objective == "mlm") and arch["head"]["task"] == "classification"
    if objective == "mlm":
        assert arch["stem"]["mask_id"] == 257 and info["source"]["pretrain"]["mask_id"] == 257
        assert json.loads((tmp_path / "run" / "hf" / "config.json").read_text())["vocab_size"] == 258
    wrong = "lm" if objective == "mlm" else "mlm"
    from stagetrain.core.errors import StagetrainError

    with pytest.raises(StagetrainError, match=f"objective={wrong} .*(encoder|decoder)"):
        train(make_cfg("model=hf", model, *DATA, "strategy=finetune", "strategy.pretrain.enabled=true",
                       f"strategy.pretrain.objective={wrong}", "dry_run=true"), None)


RESUME = ["model=hf", BERT, *DATA, "strategy=finetune", "strategy.pretrain.enabled=true",
          "strategy.pretrain.objective=mlm", "strategy.pretrain.epochs=2", "strategy.mode=lora",
          "strategy.lora.targets=[query,value]"]


@needs_fortunes
def test_a_bert_resumes_bit_identical_between_pretraining_and_fine_tuning(tmp_path):
    """Restarted at the end of mlm pretraining, the run adds the same adapters and ends with the
    same weights, bit for bit, every epoch once."""
    from conftest import assert_resumes_bit_identical_from_stage_1

    assert_resumes_bit_identical_from_stage_1(RESUME, tmp_path)


@needs_fortunes
@pytest.mark.full  # three command-line runs, one killed by SIGKILL: `pytest --full`
@pytest.mark.parametrize("when", ["pretraining", "fine-tuning"])
def test_a_bert_killed_in_pretraining_or_fine_tuning_resumes_bit_identical(when, tmp_path):
    from conftest import assert_epochs_exactly_once, final_weights, kill_when, resume_until_done

    assert run_cli(*RESUME, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path).returncode == 0
    stage, epoch = (1, 1) if when == "pretraining" else (2, 1)
    kill_when(tmp_path / "run", RESUME, tmp_path,
              lambda ev: any(e.get("stage") == stage and e.get("epoch") == epoch and e.get("split") == "val"
                             for e in ev))
    resume_until_done(tmp_path / "run", RESUME, tmp_path)
    ref, got = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(tmp_path / "run")


def _tiny(model_type: str, task: str, targets: list[str]) -> StagedModel:
    """A tiny model=hf model with trained-looking LoRA adapters on ``targets``."""
    values = {"model_type": model_type, "vocab_size": 40, "pad_token_id": 0, "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": 32}
    m = family.Config(config=family._normalised(values, "test"), task=task)
    torch.manual_seed(0)
    model, _ = apply_op(StagedModel(family.spec(m, (12,), 3)), {"op": "add_lora", "rank": 4, "alpha": 8.0,
                                                                "targets": targets}, torch.Generator())
    with torch.no_grad():
        for k, p in model.named_parameters():
            if "lora_b" in k or k.startswith("head."):
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize(("model_type", "task", "targets"), [("llama", "lm", ["q_proj", "v_proj"]),
                                                             ("bert", "classification", ["query", "value"]),
                                                             ("qwen2", "classification", ["o_proj", "down_proj"]),
                                                             ("gpt2", "lm", ["c_attn"])])  # GPT-2: Conv1D layers
def test_unmerged_lora_adapters_load_in_peft_with_stagetrains_logits(model_type, task, targets, tmp_path):
    peft = pytest.importorskip("peft", reason="peft (the hf extra) is not installed")
    from safetensors.torch import load_file

    model = _tiny(model_type, task, targets)
    export_pretrained(model, tmp_path / "hf")
    adapter = tmp_path / "hf" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "hf").resolve()) and config["r"] == 4
    keys = load_file(adapter / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") for k in keys)
    assert sum(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys) == 2 * 2 * len(targets)  # 2 layers
    assert config["modules_to_save"] and all(any(k.startswith(f"base_model.model.{m}.") for k in keys)
                                             for m in config["modules_to_save"])  # the trained head too
    auto = transformers.AutoModelForCausalLM if task == "lm" else transformers.AutoModelForSequenceClassification
    base = auto.from_pretrained(config["base_model_name_or_path"], local_files_only=True)
    tuned = peft.PeftModel.from_pretrained(base, adapter).eval()
    x = torch.randint(1, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    if task != "lm":
        x[0, 6:] = 0
    with torch.no_grad():
        ours = model(x)
        theirs = tuned(input_ids=x, **({} if task == "lm" else {"attention_mask": x.ne(0).long()})).logits
        with tuned.disable_adapter():
            without = tuned(input_ids=x, **({} if task == "lm" else {"attention_mask": x.ne(0).long()})).logits
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - without).abs().max() > 1e-3  # the adapters matter


@needs_fortunes
def test_a_finished_run_with_unmerged_lora_writes_a_peft_adapter(tmp_path):
    peft = pytest.importorskip("peft", reason="peft (the hf extra) is not installed")
    from safetensors.torch import load_file

    info = train(make_cfg("model=hf", LLAMA, *DATA, "dataset.task=lm", "strategy=finetune",
                          "strategy.source=random", "strategy.mode=lora", "strategy.lora.targets=[q_proj,v_proj]",
                          "strategy.lora.merge=false", "train.epochs=1"), tmp_path / "run")
    assert info["status"] == "completed"
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert arch["lora"]["targets"]  # still adapted
    model = StagedModel(arch).eval()
    model.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf", local_files_only=True)
    tuned = peft.PeftModel.from_pretrained(base, tmp_path / "run" / "hf" / "adapter").eval()
    x = torch.randint(1, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x) - tuned(input_ids=x).logits).abs().max() <= 1e-5


def test_lora_on_gpt2s_conv1d_layers_merges_to_the_same_function():
    """GPT-2's projections are transformers' Conv1D (weight in x out): adapters attach to them
    by name, leave the function unchanged until trained, and merge back exactly."""
    from stagetrain.growth.ops import merge_lora
    from stagetrain.models.lora import LoRAConv1D

    model = _tiny("gpt2", "lm", ["c_attn", "c_fc"])
    adapted = [m for m in model.modules() if isinstance(m, LoRAConv1D)]
    assert len(adapted) == 4  # c_attn and mlp.c_fc of both layers
    x = torch.randint(1, 40, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
        for m in adapted:
            m.lora_b.zero_()
        plain = model(x)
    assert (before - plain).abs().max() > 1e-4  # the trained-looking adapters change the output
    model = _tiny("gpt2", "lm", ["c_attn", "c_fc"])
    merged = merge_lora(model).eval()
    assert not any(isinstance(m, LoRAConv1D) for m in merged.modules())
    with torch.no_grad():
        assert (merged(x) - model(x)).abs().max() <= 1e-5


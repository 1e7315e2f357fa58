"""model=hf (issue 26, models): every supported transformers architecture cut into stem,
blocks and head gives the HF model's own logits (weights loaded from a save_pretrained folder,
and exported back), strategies run on it (scratch, layerwise, grow by insert and stack), a
finished run writes <run>/hf/ that transformers loads, and bad folders / architectures are
refused in one paragraph. Offline, tiny configs."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import DATA_ROOT, make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.families.hf import config as family
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel
from stagetrain.models.hf_io import export_pretrained, load_pretrained
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32, "intermediate_size": 64}
CONFIGS = {
    "llama": {**SMALL, "num_key_value_heads": 2},
    "qwen2": {**SMALL, "num_key_value_heads": 2},
    "mistral": {**SMALL, "num_key_value_heads": 2},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32},
    "bert": {**SMALL, "max_position_embeddings": 32},
    "roberta": {**SMALL, "max_position_embeddings": 34},
}
CASES = [(t, task) for t in CONFIGS for task in (("mlm", "classification") if t in family.ENCODERS
                                                  else ("lm", "classification"))]
AUTO = {"lm": transformers.AutoModelForCausalLM, "mlm": transformers.AutoModelForMaskedLM,
        "classification": transformers.AutoModelForSequenceClassification}
VOCAB, T, CLASSES = 40, 12, 3


def _hf(model_type: str, task: str) -> torch.nn.Module:
    """A randomly initialised transformers model of the tiny config (HF's own init)."""
    config = transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, pad_token_id=0, num_labels=CLASSES,
                                               **CONFIGS[model_type])
    torch.manual_seed(1)
    return AUTO[task].from_config(config, attn_implementation="sdpa").eval()


def _ids(task: str) -> torch.Tensor:
    x = torch.randint(1, VOCAB, (3, T), generator=torch.Generator().manual_seed(0))
    if task != "lm":  # right-padded texts, as stagetrain's classification data
        x[0, 7:] = 0
        x[1, 4:] = 0
    return x


def _logits(module: torch.nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(module, StagedModel):
            return module(x)
        return module(input_ids=x, **({} if task == "lm" else {"attention_mask": x.ne(0).long()})).logits


def _cut(folder, task: str) -> StagedModel:
    """stagetrain's model of a save_pretrained folder (config.json + model.safetensors)."""
    values = family._pretrained_config(str(folder))
    m = family.Config(config=family._normalised(values, "test"), pretrained=str(folder), task=task,
                      mask_id=VOCAB - 1 if task == "mlm" else None)
    model = StagedModel(family.spec(m, (T,), CLASSES)).eval()
    info = load_pretrained(model, str(folder))
    assert info["head"] == "pretrained"
    return model


def _close(ours: torch.Tensor, theirs: torch.Tensor, x: torch.Tensor, task: str) -> None:
    assert ours.shape == theirs.shape
    if task == "mlm":  # padded positions are no one's output
        ours, theirs = ours[x.ne(0)], theirs[x.ne(0)]
    assert ours.std() > 1e-3  # a real function, not a constant
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize(("model_type", "task"), CASES)
def test_the_cut_gives_the_hf_models_logits(model_type, task, tmp_path):
    hf = _hf(model_type, task)
    hf.save_pretrained(tmp_path / "src", safe_serialization=True)
    model = _cut(tmp_path / "src", task)
    x = _ids(task)
    _close(_logits(model, x, task), _logits(hf, x, task), x, task)
    assert len(model.block_names) == 2 and model.has_stem


@pytest.mark.parametrize(("model_type", "task"), [("llama", "lm"), ("gpt2", "classification"), ("bert", "mlm"),
                                                  ("roberta", "classification")])
def test_export_round_trips_through_from_pretrained(model_type, task, tmp_path):
    hf = _hf(model_type, task)
    hf.save_pretrained(tmp_path / "src", safe_serialization=True)
    model = _cut(tmp_path / "src", task)
    with torch.no_grad():  # trained weights, not the source's
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_pretrained(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) >= ["config.json"]
    back = AUTO[task].from_pretrained(tmp_path / "out", local_files_only=True).eval()
    x = _ids(task)
    _close(_logits(back, x, task), _logits(model, x, task), x, task)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_inserting_a_decoder_layer_keeps_the_function(model_type, tmp_path):
    hf = _hf(model_type, "lm")
    hf.save_pretrained(tmp_path / "src", safe_serialization=True)
    model = _cut(tmp_path / "src", "lm")
    x = _ids("lm")
    before = _logits(model, x, "lm")
    grown, _ = apply_op(model, {"op": "deepen", "after": "block1", "kind": "residual_zero"}, torch.Generator())
    assert len(grown.block_names) == 3
    assert (_logits(grown.eval(), x, "lm") - before).abs().max() <= 1e-5
    stacked, info = apply_op(model, {"op": "stack"}, torch.Generator())
    assert len(stacked.block_names) == 4 and len(info["copies"]) == 2


def test_bad_folders_and_architectures_are_one_paragraph(tmp_path):
    with pytest.raises(StagetrainError, match="network download.*model.pretrained=<folder>"):
        family._pretrained_config("meta-llama/Llama-3.2-1B")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(StagetrainError, match="pytorch_model.bin: PyTorch pickles.*safetensors"):
        family._pretrained_config(str(tmp_path / "pickled"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(StagetrainError, match="has no model.safetensors"):
        family._pretrained_config(str(tmp_path / "nothing"))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    data = ["dataset=text_classification", f"dataset.path={texts}", "plots=false"]
    with pytest.raises(StagetrainError, match="model_type=t5 is not an architecture.*bert, roberta, gpt2, llama"):
        train(make_cfg("model=hf", "model.config={model_type: t5, d_model: 32}", *data), tmp_path / "run")
    with pytest.raises(StagetrainError, match="pytorch_model.bin: PyTorch pickles"):
        train(make_cfg("model=hf", f"model.pretrained={tmp_path / 'pickled'}", *data), tmp_path / "run")
    with pytest.raises(StagetrainError, match="hidden_size=30, num_attention_heads=4.*must be divisible"):
        train(make_cfg("model=hf", "model.config={model_type: llama, hidden_size: 30, num_attention_heads: 4}",
                       *data), tmp_path / "run")
    with pytest.raises(StagetrainError, match="model.config.hiden_size is not a setting of a bert model. Did you "
                                              "mean 'hidden_size'"):
        train(make_cfg("model=hf", "model.config={model_type: bert, hiden_size: 32}", *data), tmp_path / "run")
    with pytest.raises(StagetrainError, match="multiple of num_key_value_heads"):
        train(make_cfg("model=hf", "model.config={model_type: qwen2, hidden_size: 32, num_attention_heads: 4, "
                       "num_key_value_heads: 3}", *data), tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()


FORTUNES = DATA_ROOT / "text" / "fortunes"
needs_fortunes = pytest.mark.skipif(
    not (FORTUNES / "zippy").is_file(),
    reason=f"needs the fortunes collection, not found in {FORTUNES}: put it in ../shared/data/text/fortunes beside "
           "the repository, or set STAGETRAIN_DATA")
LLAMA = "model.config={model_type: llama, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, " \
        "intermediate_size: 64}"
RUN = ["model=hf", LLAMA, "dataset=fortunes", "dataset.task=lm", f"dataset.root={DATA_ROOT}", "dataset.max_train=64",
       "dataset.max_len=16", "train.epochs=1", "train.batch_size=16", "device.threads=1", "plots=false"]


@needs_fortunes
@pytest.mark.parametrize("strategy", [["strategy=scratch"], ["strategy=layerwise"],
                                      ["strategy=grow", "strategy.deepen=insert", "strategy.epochs_per_stage=1"],
                                      ["strategy=grow", "strategy.deepen=stack", "strategy.epochs_per_stage=1"]])
def test_strategies_run_on_a_llama_and_export_it(strategy, tmp_path):
    info = train(make_cfg(*RUN, *strategy), tmp_path / "run")
    assert info["status"] == "completed" and all(s.get("objective", "lm") == "lm" for s in info["stages"])
    assert info["final"]["val/loss"] < 6.0  # ln(257) = 5.55: a language model's next-token loss
    growth = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if "probe_loss_before" in e]
    assert len(growth) == ("strategy=grow" in strategy)
    if "strategy.deepen=insert" in strategy:  # zero o_proj/down_proj: the inserted layer is the identity
        assert abs(growth[0]["probe_loss_after"] - growth[0]["probe_loss_before"]) <= 1e-5
    config = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert config["num_hidden_layers"] == len(arch["blocks"]) and config["model_type"] == "llama"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf", local_files_only=True).eval()
    model = StagedModel(arch).eval()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"))
    x = torch.randint(1, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    assert (_logits(back, x, "lm") - _logits(model, x, "lm")).abs().max() <= 1e-5


@needs_fortunes
def test_a_bert_classifies_fortunes_categories(tmp_path):
    info = train(make_cfg("model=hf", "model.config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, "
                          "num_attention_heads: 4, intermediate_size: 64}", "dataset=fortunes",
                          f"dataset.root={DATA_ROOT}", "dataset.max_train=64", "dataset.max_len=32", "train.epochs=1",
                          "device.threads=1", "plots=false"), tmp_path / "run")
    assert info["status"] == "completed" and "val/acc" in info["final"]
    assert json.loads((tmp_path / "run" / "hf" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"]


@needs_fortunes
def test_a_bert_trains_by_masked_tokens_and_exports_its_mlm_head(tmp_path):
    """task=null on LM text gives an encoder the mlm task: the stage through its MLM head trains
    mlm (masked tokens, never the visible next token) and the export is a BertForMaskedLM."""
    from stagetrain.core.plan import Plan
    from stagetrain.nn.objectives import objective_of

    bert = ["model=hf", "model.config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: "
            "4, intermediate_size: 64}", "dataset=fortunes", "dataset.task=lm", f"dataset.root={DATA_ROOT}",
            "dataset.max_train=64", "dataset.max_len=16", "train.epochs=1", "device.threads=1", "plots=false"]
    info = train(make_cfg(*bert, "strategy=scratch"), tmp_path / "run")
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert arch["head"]["task"] == "mlm" and arch["stem"]["mask_id"] == 257 and arch["stem"]["vocab_size"] == 258
    assert objective_of(Plan.from_dict(info["plan"]).stages[0], StagedModel(arch)) == "mlm"
    assert info["final"]["val/loss"] > 4.0 and "val/ppl" in info["final"]  # no copying of visible tokens
    config = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["vocab_size"] == 258
    with pytest.raises(StagetrainError, match="no per-layer masked-token head yet"):
        train(make_cfg(*bert, "strategy=layerwise"), tmp_path / "layerwise")


def test_the_command_line_refuses_a_pickled_folder_in_one_paragraph(tmp_path):
    from conftest import run_cli

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    proc = run_cli("model=hf", f"model.pretrained={folder}", "dataset=text_classification", f"dataset.path={texts}",
                   "plots=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "pytorch_model.bin: PyTorch pickles" in proc.stderr and "Traceback" not in proc.stderr


@needs_fortunes
def test_a_lora_finetune_targets_the_models_own_module_names(tmp_path):
    """finetune from a model=hf source run with LoRA on q_proj,v_proj (PEFT-style names): the
    adapters and the head train, the adapters are merged at the end and the export loads."""
    train(make_cfg(*RUN, "strategy=scratch"), tmp_path / "src")
    info = train(make_cfg(*RUN, "strategy=finetune", f"strategy.source={tmp_path / 'src'}", "strategy.mode=lora",
                          "strategy.lora.targets=[q_proj,v_proj]"), tmp_path / "run")
    assert info["status"] == "completed" and info["stages"][0]["objective"] == "lm"
    rank = int(make_cfg("strategy=finetune").strategy.lora.rank)
    adapters = 2 * 2 * rank * (32 + 32)  # 2 layers x (q_proj, v_proj) x A and B of a 32 x 32 projection
    head = 257 * 32 + 32  # the head trains too: lm_head and the final RMSNorm
    assert info["stages"][0]["trainable_params"] == adapters + head
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf", local_files_only=True)
    assert back.config.num_hidden_layers == 2


@needs_fortunes
def test_a_grown_llama_resumes_bit_identical_across_the_insertion(tmp_path):
    """Restarted from the end of stage 1 (before the insertion), the run inserts the same layer,
    carries Adam's moments and ends with the same weights, bit for bit."""
    from conftest import assert_resumes_bit_identical_from_stage_1

    args = [*RUN, "strategy=grow", "strategy.deepen=insert", "strategy.epochs_per_stage=1",
            "strategy.optimizer_state=map"]
    assert_resumes_bit_identical_from_stage_1(args, tmp_path)


@pytest.mark.parametrize(("model_type", "task"), [("llama", "lm"), ("gpt2", "lm"), ("bert", "mlm")])
def test_a_language_models_spec_becomes_its_classifier_and_gets_a_mask_token(model_type, task, tmp_path):
    """as_classifier: the LM's stem and layers under transformers' own sequence classifier (the
    converted model gives AutoModelForSequenceClassification's logits on padded texts);
    with_mask_token: one more embedding row, the mask token's id the old vocabulary size."""
    hf = _hf(model_type, task)
    hf.save_pretrained(tmp_path / "src", safe_serialization=True)
    lm = _cut(tmp_path / "src", task)
    arch = family.as_classifier(lm.spec, CLASSES, None)
    classifier = StagedModel(arch).eval()
    body = {k: v for k, v in lm.state_dict().items() if not k.startswith("head.")}
    missing = classifier.load_state_dict(body, strict=False).missing_keys
    assert missing and all(k.startswith("head.") for k in missing)  # only the new head is fresh
    with torch.no_grad():
        for p in classifier.head.parameters():
            p.normal_()
    from stagetrain.models.hf_io import hf_model

    x = _ids("classification")
    _close(_logits(classifier, x, "classification"), _logits(hf_model(classifier), x, "classification"), x,
           "classification")
    if task == "mlm":  # an mlm model has its mask token already
        assert family.with_mask_token(arch) is arch and arch["stem"]["mask_id"] == VOCAB - 1
        return
    masked = family.with_mask_token(arch)
    assert masked["stem"]["mask_id"] == VOCAB and masked["stem"]["vocab_size"] == VOCAB + 1
    grown = StagedModel(masked)
    assert grown.stem.token_embedding().num_embeddings == VOCAB + 1 and family.with_mask_token(masked) is masked

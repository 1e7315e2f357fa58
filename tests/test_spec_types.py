"""The architecture spec as typed records (core/spec.py): every family's spec, built from its
default config through the run's own path (``runs.parts.run_specs``: the first architecture and a
growing strategy's last), reads into records of its part types and writes back exactly the
plain dict it was (keys, values and key order: checkpoints, run.json and spec hashes do not
change); an older checkpoint's spec reads; an unknown part type is one paragraph."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import make_cfg

from stagetrain.core import trust
from stagetrain.core.errors import StagetrainError
from stagetrain.core.parts import Conv, Dense, LinearHead
from stagetrain.core.parts_seq import HFEmbed, HFHead, TokenEmbed
from stagetrain.core.spec import PART_TYPES, ModelSpec, from_dict
from stagetrain.datasets import dataset_meta
from stagetrain.families import build_spec, family
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel
from stagetrain.nn.modelops import AddLora, Deepen, MergeLora, Widen
from stagetrain.runs.config import validate
from stagetrain.runs.parts import run_specs

LEGACY = "tests/data/legacy_layerwise_run/checkpoints/last.pt"
IMAGES = ["dataset=synthetic", "dataset.shape=[3,16,16]"]
GPT2 = "model.config={model_type: gpt2, n_embd: 32, n_layer: 2, n_head: 2, n_positions: 64}"
BERT = ("model.config={model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 64}")
LLAMA = ("model.config={model_type: llama, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
         "intermediate_size: 64}")


def _families(corpus: str, labelled: str) -> dict[str, list[str]]:
    text = ["dataset=text", f"dataset.paths=[{corpus}]", "dataset.max_len=16"]
    labels = ["dataset=text_classification", f"dataset.path={labelled}", "dataset.max_len=16"]
    return {
        "mlp": ["model=mlp"], "cnn": ["model=cnn", "model.fc_widths=[16]"], "resnet": ["model=resnet", *IMAGES],
        "resnet_grow": ["model=resnet", "strategy=grow", *IMAGES], "mlp_grow": ["strategy=grow"],
        "transformer": ["model=transformer"], "transformer_lm": ["model=transformer", *text],
        "transformer_cls": ["model=transformer", *labels],
        "transformer_grow": ["model=transformer", "strategy=grow", *text],
        "hf_gpt2": ["model=hf", GPT2, *text], "hf_bert": ["model=hf", BERT, *text, "model.task=mlm"],
        "hf_llama_cls": ["model=hf", LLAMA, *labels],
        "torchvision_resnet": ["model=torchvision", "model.arch=resnet18", *IMAGES[:1], "dataset.shape=[3,32,32]"],
        "torchvision_vit": ["model=torchvision", "model.arch=vit_b_16", *IMAGES[:1], "dataset.shape=[3,32,32]"],
        "custom": ["model=custom", "model.target=custom_net.SmallNet", "model.stem=[conv,bn,act]",
                   "model.blocks=[stage1,stage2]", "model.head=fc", "model.head_input=pool_flatten"],
    }


@pytest.fixture(scope="module")
def family_specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    root = tmp_path_factory.mktemp("texts")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    (root / "labelled.jsonl").write_text("".join(json.dumps({"text": f"text {i} " * 3, "label": i % 2}) + "\n"
                                                 for i in range(16)))
    out = {}
    with trust.vouched(["custom_net.SmallNet"]):
        for name, overrides in _families(str(root / "corpus.txt"), str(root / "labelled.jsonl")).items():
            cfg = validate(make_cfg(*overrides))
            shape, classes, *_ = dataset_meta(cfg.dataset)
            out[name] = run_specs(cfg, shape, classes)
    return out


def _same(a: dict, b: dict) -> bool:
    """Equal with the same key order, at every depth."""
    return json.dumps(a) == json.dumps(b)


def test_every_family_spec_round_trips_with_its_key_order(family_specs):
    kinds = set()
    for name, specs in family_specs.items():
        for d in specs:
            x = from_dict(d)
            assert isinstance(x, ModelSpec)
            assert _same(x.to_dict(), d), name
            assert from_dict(x.to_dict()) == x, name
            kinds |= {type(p).TAG for p in [x.stem, x.shared, x.head, *x.blocks] if p is not None}
    assert kinds == set(PART_TYPES)  # every part type of the table, read from a family's spec


def test_fields_are_typed_attributes(family_specs):
    cnn = from_dict(family_specs["cnn"][0])
    assert isinstance(cnn.blocks[0], Conv) and isinstance(cnn.blocks[-1], Dense)
    assert cnn.blocks[0].inp == cnn.in_shape[0] and cnn.blocks[1].inp == cnn.blocks[0].out
    assert isinstance(cnn.head, LinearHead) and "type" not in cnn.to_dict()["head"]  # a head naming no type
    bert = from_dict(family_specs["hf_bert"][0])
    assert isinstance(bert.stem, HFEmbed) and bert.stem.mask_id is not None and isinstance(bert.head, HFHead)
    assert bert.head.objective == "mlm" and bert.blocks[0].config is not bert.blocks[1].config
    lm = from_dict(family_specs["transformer_lm"][0])
    assert isinstance(lm.stem, TokenEmbed) and lm.head.to_dict()["type"] == "lm_head"


def test_a_typed_spec_changes_by_replace_and_writes_the_change(family_specs):
    d = family_specs["mlp"][0]
    x = from_dict(d)
    wider = dataclasses.replace(x, blocks=[dataclasses.replace(x.blocks[0], out=999), *x.blocks[1:]])
    assert wider.to_dict()["blocks"][0]["out"] == 999 and list(wider.to_dict()["blocks"][0]) == list(d["blocks"][0])
    assert x.to_dict() == d  # the original is untouched
    x.blocks[0].residual = True  # a key set since it was read goes after the source's keys
    assert list(x.to_dict()["blocks"][0])[-1] == "residual"
    built = ModelSpec(in_shape=[4], num_classes=2, blocks=[Dense(name="block1", inp=4, out=3, out_shape=[3])],
                      head=LinearHead(inp=3, out=2))  # built in code: each record's ORDER, unset fields left out
    assert _same(built.to_dict(), {"in_shape": [4], "num_classes": 2, "blocks": [
        {"name": "block1", "type": "linear", "in": 4, "out": 3, "out_shape": [3]}], "head": {"in": 3, "out": 2}})


def test_an_older_checkpoints_spec_reads_back_unchanged():
    arch = torch.load(LEGACY, map_location="cpu", weights_only=False)["arch"]
    x = from_dict(arch)
    assert [b.name for b in x.blocks] == ["block1", "block2"] and x.blocks[1].out == 8
    assert _same(x.to_dict(), arch)


def test_unknown_keys_lora_and_an_empty_stem_survive_the_round_trip():
    d = {"in_shape": [4], "num_classes": 2, "stem": {}, "blocks": [
        {"name": "b", "type": "linear", "in": 4, "out": 4, "future_key": [1, {"x": 2}]}],
        "head": {"in": 4, "out": 2}, "lora": {"rank": 2, "alpha": 4.0, "targets": ["blocks.b.linear"]}, "note": 1}
    x = from_dict(d)
    assert x.stem is None and x.lora.rank == 2 and x.extra == {"note": 1}
    assert _same(x.to_dict(), d)


def test_an_unknown_part_type_is_one_paragraph():
    d = {"in_shape": [4], "num_classes": 2, "blocks": [{"name": "b", "type": "quantum", "in": 4, "out": 4}],
         "head": {"in": 4, "out": 2}}
    with pytest.raises(StagetrainError, match=r"names a part of type 'quantum', which no model family registers "
                                              r"\(registered: conv, custom_block"):
        from_dict(d)
    with pytest.raises(StagetrainError, match="lacks the keys \\['in'\\]: a linear part needs"):
        from_dict({**d, "blocks": [{"name": "b", "type": "linear", "out": 4}]})
    with pytest.raises(StagetrainError, match="not a mapping"):
        from_dict({**d, "blocks": ["os.system"]})
    with pytest.raises(StagetrainError, match=r"names a part of type \['linear'\]"):
        from_dict({**d, "blocks": [{"name": "b", "type": ["linear"], "in": 4, "out": 4}]})


def test_family_hooks_that_change_a_spec_round_trip(family_specs):
    for name, plug in (("transformer_lm", "transformer"), ("hf_gpt2", "hf")):
        changed = family(plug).with_mask_token(family_specs[name][0])
        assert _same(from_dict(changed).to_dict(), changed)
        classifier = family(plug).as_classifier(changed, 3, None)
        assert _same(from_dict(classifier).to_dict(), classifier)


# The key order each family has always written (checkpoints, run.json, model.safetensors' metadata), taken
# from the plain-dict builders before the typed spec: a record built in code must keep writing it.
PLAIN, DENSE = ["in_shape", "num_classes", "blocks", "head"], ["name", "type", "in", "out", "act", "bn", "dropout",
                                                               "out_shape"]
WITH_STEM, USER = ["in_shape", "num_classes", "stem", "blocks", "head"], ["in_shape", "num_classes", "shared", "stem",
                                                                          "blocks", "head"]
HF = ["type", "model_type", "config", "tokens"]
FORMAT = {
    "mlp": (PLAIN, None, DENSE, ["in", "out"]),
    "cnn": (PLAIN, None, ["name", "type", "in", "out", "kernel", "pool", "act", "bn", "dropout", "out_shape"],
            ["in", "out"]),
    "resnet": (WITH_STEM, ["type", "kind", "in", "out", "in_hw", "out_shape"],
               ["name", "type", "unit", "in", "out", "mid", "units", "stride", "shortcut", "in_hw", "out_shape"],
               ["in", "out", "type"]),
    "transformer": (WITH_STEM, ["type", "in_shape", "patch", "d_model", "cls_token", "tokens", "out_shape"],
                    ["name", "type", "d_model", "n_heads", "mlp_hidden", "tokens", "causal", "dropout", "out_shape"],
                    ["type", "in", "out", "pool", "tokens"]),
    "transformer_lm": (WITH_STEM, ["type", "vocab_size", "max_len", "d_model", "out_shape"],
                       ["name", "type", "d_model", "n_heads", "mlp_hidden", "tokens", "causal", "dropout", "out_shape"],
                       ["type", "in", "out", "tie", "tokens"]),
    "transformer_cls": (WITH_STEM, ["type", "vocab_size", "max_len", "d_model", "padding", "out_shape"],
                        ["name", "type", "d_model", "n_heads", "mlp_hidden", "tokens", "causal", "dropout",
                         "out_shape", "padding"], ["type", "in", "out", "pool", "tokens", "padding"]),
    "hf_gpt2": (WITH_STEM, [*HF, "vocab_size", "d_model", "out_shape"],
                ["name", *HF, "index", "causal", "out_shape"], [*HF, "task", "in", "out", "tie", "objective"]),
    "hf_bert": (WITH_STEM, [*HF, "padding", "vocab_size", "d_model", "out_shape", "mask_id"],
                ["name", *HF, "padding", "index", "causal", "out_shape"],
                [*HF, "padding", "task", "in", "out", "tie", "objective"]),
    "torchvision_vit": (USER, ["type", "conv", "class_token", "pos_embedding", "dropout", "flops"],
                        ["name", "type", "path", "out_shape", "flops"], ["type", "modules", "input", "out", "in", "flops"]),
    "custom": (USER, ["type", "modules", "flops"], ["name", "type", "path", "out_shape", "flops"],
               ["type", "modules", "input", "out", "in", "flops"]),
}


def test_every_family_writes_the_key_order_it_always_wrote(family_specs):
    for name, (top, stem, block, head) in FORMAT.items():
        d = family_specs[name][0]
        got = (list(d), list(d["stem"]) if d.get("stem") else None, list(d["blocks"][0]), list(d["head"]))
        assert got == (top, stem, block, head), name


def test_the_legacy_checkpoints_spec_is_what_model_mlp_builds_today():
    arch = torch.load(LEGACY, map_location="cpu", weights_only=False)["arch"]
    assert _same(build_spec(make_cfg("model=mlp", "model.widths=[16,8]").model, (1, 8, 8), 10), arch)


def test_growth_writes_the_plain_dict_it_always_wrote():
    model = StagedModel(build_spec(make_cfg("model=mlp", "model.widths=[6,6]").model, (1, 4, 4), 3))
    g = torch.Generator().manual_seed(0)
    wide, _ = apply_op(model, Widen("block1", 9, "net2net", 0.0), g)
    deep, _ = apply_op(wide, Deepen("block1", "residual_zero"), g)
    adapted, _ = apply_op(deep, AddLora(2, 4.0, None), g)
    spec = adapted.spec
    assert [b["name"] for b in spec["blocks"]] == ["block1", "block3", "block2"] and spec["head"] == {"in": 6, "out": 3}
    assert list(spec["blocks"][1]) == [*DENSE, "pool", "residual"] and spec["blocks"][1]["residual"] is True
    assert spec["blocks"][0]["out"] == 9 and spec["blocks"][2]["in"] == 9 and list(spec["blocks"][0]) == DENSE
    assert list(spec) == [*PLAIN, "lora"] and list(spec["lora"]) == ["rank", "alpha", "targets"]
    merged, _ = apply_op(adapted, MergeLora(), g)
    assert list(merged.spec) == PLAIN and from_dict(merged.spec) == merged.arch

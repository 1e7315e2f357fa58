"""torchvision's builders that stagetrain knows (``ARCHS``): where each is cut into stem,
blocks and head. Plain data, torch-free: read by ``families/torchvision.py`` (``model=torchvision``)
and by ``core/trust.py`` (these builders need no vouching)."""

from __future__ import annotations

from typing import Any


def _resnet() -> dict[str, Any]:
    return {"stem": ["conv1", "bn1", "relu", "maxpool"], "blocks": ["layer1", "layer2", "layer3", "layer4"],
            "head": ["fc"], "head_input": "pool_flatten"}


def _features(n: int, head: list[str], head_input: str = "pool_flatten") -> dict[str, Any]:
    """``features.0`` is the stem, ``features.1 .. features.{n-1}`` the blocks."""
    return {"stem": ["features.0"], "blocks": [f"features.{i}" for i in range(1, n)], "head": head,
            "head_input": head_input}


def _vit(layers: int, patch: int) -> dict[str, Any]:
    return {"stem": {"type": "vit_stem", "conv": "conv_proj", "class_token": "class_token",
                     "pos_embedding": "encoder.pos_embedding", "dropout": "encoder.dropout"},
            "blocks": [f"encoder.layers.encoder_layer_{i}" for i in range(layers)],
            "head": ["encoder.ln", "heads"], "head_input": "cls_token", "patch": patch}


ARCHS: dict[str, dict[str, Any]] = {
    **{name: _resnet() for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                     "resnext50_32x4d", "wide_resnet50_2")},
    "mobilenet_v2": _features(19, ["classifier"]),
    "mobilenet_v3_small": _features(13, ["classifier"]),
    "mobilenet_v3_large": _features(17, ["classifier"]),
    "efficientnet_b0": _features(9, ["classifier"]),
    "convnext_tiny": _features(8, ["classifier"], head_input="pool"),
    "vit_b_16": _vit(12, 16),
    "vit_b_32": _vit(12, 32),
}

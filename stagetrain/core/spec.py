"""The architecture spec as a typed record (torch-free): ``ModelSpec`` (``in_shape``,
``num_classes``, an optional ``shared`` module, an optional ``stem``, the named ``blocks``, the
``head`` and optional ``lora`` adapters) whose parts are the records of ``core/parts.py`` and
``core/parts_seq.py``.

A spec is stored as a plain dict -- in checkpoints (``arch``), run.json and spec files -- and
that dict does not change: ``to_dict`` gives exactly the dict the spec was read from (the
same keys and values in the same order; keys no field declares kept in ``extra``), and
``from_dict`` reads today's dicts and older ones. The part a ``"type"`` names is looked up in
``PART_TYPES`` (``Part.declared``: every record defined, stagetrain's and the family plugs');
a type no family declares is one paragraph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import stagetrain.core.parts  # noqa: F401 - defining stagetrain's part records declares them
import stagetrain.core.parts_seq  # noqa: F401
from stagetrain.core.errors import StagetrainError
from stagetrain.core.partbase import Block, Head, Part, Record
from stagetrain.core.plugs import axis

PART_TYPES: dict[str, type[Part]] = Part.declared  # TAG -> record: stagetrain's (imported above) and the plugs' loaded
DEFAULT_HEAD = "linear_head"  # the type of a head that names none (mlp, cnn)
PART_KEYS = ("shared", "stem", "head")


def part_from_dict(data: Any, where: str, default: str | None = None) -> Part:
    """The record of one part (``default``: the type of a part that names none); an unknown
    type is one paragraph."""
    if not isinstance(data, dict):
        raise StagetrainError(f"The architecture spec's {where} is a {type(data).__name__}, not a mapping. "
                              "It was not written by stagetrain, or was altered.")
    return part_class(data.get("type", default)).from_plain(data, where)


def part_class(name: Any) -> type[Part]:
    """The record of the part type ``name`` (a spec's ``"type"``). Not declared yet: the model
    family plugs' torch-free configs are loaded (a family declares its own part types there),
    as every plug is found (``core/plugs.py``) -- never a path or callable a file names.
    Unknown: one paragraph."""
    if isinstance(name, str) and name not in PART_TYPES:
        load_family_parts()
    if not isinstance(name, str) or name not in PART_TYPES:
        raise StagetrainError(
            f"The model spec names a part of type {name!r}, which no model family registers "
            f"(registered: {', '.join(sorted(PART_TYPES))}). The checkpoint may come from a newer stagetrain "
            "or a family that is not installed.")
    return PART_TYPES[name]


def load_family_parts() -> None:
    """Load every model family plug's ``config.py``, which declares the part types it adds."""
    families = axis("model")
    for name in families:
        families.config(name)


@dataclass(kw_only=True)
class Lora(Record):
    """``lora``: LoRA adapters on the layers ``targets`` (resolved module names), ``alpha/rank``."""

    rank: int
    alpha: float
    targets: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ModelSpec(Record):
    """A whole architecture: what ``StagedModel`` is built from and checkpoints store."""

    in_shape: list[int]
    num_classes: int | None = None
    shared: Part | None = None
    stem: Part | None = None
    blocks: list[Block] = field(default_factory=list)
    head: Head
    lora: Lora | None = None
    blank: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # a part given as {} / None

    ORDER: ClassVar[tuple[str, ...]] = ("in_shape", "num_classes", "shared", "stem", "blocks", "head", "lora")

    @classmethod
    def own_fields(cls) -> list[str]:
        return [n for n in super().own_fields() if n != "blank"]

    def _written(self, key: str) -> bool:
        return key in self.blank or super()._written(key)

    def _value(self, key: str) -> Any:
        if key in PART_KEYS + ("lora",) and getattr(self, key) is None:
            return dict(self.blank[key]) if isinstance(self.blank.get(key), dict) else self.blank.get(key)
        return super()._value(key)

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]



def from_dict(data: Any, where: str = "spec") -> ModelSpec:
    """The typed spec of a plain dict (a family's, a checkpoint's, a file's), or one paragraph."""
    if isinstance(data, ModelSpec):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), list):
        raise StagetrainError(f"The architecture {where} is not a mapping with a list of blocks and a head. "
                              "It was not written by stagetrain, or was altered.")
    plain = {k: v for k, v in data.items() if k not in (*PART_KEYS, "blocks", "lora")}
    spec = ModelSpec.from_plain({**plain, "blocks": [], "head": {}}, where)
    assert isinstance(spec, ModelSpec)
    spec.keys = tuple(data)
    spec.blocks = [part_from_dict(b, f"{where} block {i}") for i, b in enumerate(data["blocks"])]
    for key in PART_KEYS:
        if data.get(key):
            setattr(spec, key, part_from_dict(data[key], f"{where} {key}", DEFAULT_HEAD if key == "head" else None))
        elif key in data:
            spec.blank[key] = data[key]
    if data.get("lora"):
        spec.lora = Lora.from_plain(data["lora"], f"{where} lora")
    elif "lora" in data:
        spec.blank["lora"] = data["lora"]
    if not isinstance(spec.head, Head):
        raise StagetrainError(f"The architecture {where} has no head. It was not written by stagetrain, or was altered.")
    return spec


def as_spec(spec: ModelSpec | dict[str, Any]) -> ModelSpec:
    """``spec`` itself, or the typed spec of its plain dict."""
    return spec if isinstance(spec, ModelSpec) else from_dict(spec)

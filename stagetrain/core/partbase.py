"""The base of the typed architecture spec (torch-free): ``Record`` (a typed view of one plain
dict of a spec, with its round trip) and the kinds of part, ``Part``, ``Block``, ``Head``.

A part is a stem, a block, a head or a shared module (``models/registry.py`` builds it). In a
checkpoint, run.json and a spec file it is the plain dict it always was; ``to_dict`` gives
exactly that dict back (the same keys in the same order, unknown keys kept in ``extra``) and
``part_from_dict`` reads it. ``in`` is a Python keyword: the field is ``inp``, the key "in".
A field left out of the dict is None (or its default) and stays out of ``to_dict``. A record
built in code (no source dict) writes its set fields in its type's ``ORDER``, the key order
its family has always written.
The records of stagetrain's part types are in ``core/parts.py`` and ``core/parts_seq.py``; a
record declares itself when defined (``Part.declared``), and ``core/spec.part_class`` finds
the record of a ``"type"`` there (loading the family plugs' configs on a miss).
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from stagetrain.core.errors import StagetrainError

KEY = {"inp": "in"}  # field name -> its key in the plain dict, where the two differ


def key_of(name: str) -> str:
    return KEY.get(name, name)


@dataclass(kw_only=True)
class Record:
    """A typed view of one plain dict of a spec; ``extra`` keeps keys no field declares, and
    ``keys`` the source dict's key order (so ``to_dict`` reproduces it)."""

    extra: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    TAG: ClassVar[str | None] = None  # the "type" value this record writes, if any
    ORDER: ClassVar[tuple[str, ...]] = ()  # the key order of a record built in code (not read from a dict)

    @classmethod
    def own_fields(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in ("extra", "keys")]

    def _value(self, key: str) -> Any:
        if key == "type":
            return self.TAG
        name = next((n for n, k in KEY.items() if k == key), key)
        if name in self.own_fields():
            return _plain(getattr(self, name))
        return copy.deepcopy(self.extra[key])

    def _written(self, key: str) -> bool:
        """Whether a record built in code writes ``key``: its field is set."""
        return getattr(self, next((n for n, k in KEY.items() if k == key), key)) is not None

    def to_dict(self) -> dict[str, Any]:
        """The plain dict: the source's keys in its order (built in code: ``ORDER``'s keys that are
        set), then any field set since, then extras."""
        if self.keys is not None:
            order = list(self.keys)
        else:
            order = [k for k in self.ORDER or ("type",) if (self.TAG if k == "type" else self._written(k))]
        for name in self.own_fields():
            if key_of(name) not in order and getattr(self, name) is not None:
                order.append(key_of(name))
        order += [k for k in self.extra if k not in order]
        return {k: self._value(k) for k in order if k == "type" or k in self.extra or k in map(key_of, self.own_fields())}

    @classmethod
    def from_plain(cls, data: dict[str, Any], where: str) -> Record:
        names = {key_of(n): n for n in cls.own_fields()}
        required = [key_of(f.name) for f in fields(cls) if f.name in cls.own_fields()
                    and f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            kind = f"a {cls.TAG} part" if cls.TAG else "it"
            raise StagetrainError(f"The architecture spec's {where} lacks the keys {missing}: {kind} needs "
                                  f"{sorted(required)}. It was not written by stagetrain, or was altered.")
        values = {names[k]: copy.deepcopy(v) for k, v in data.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in names and k != "type"}
        return cls(**values, extra=extra, keys=tuple(data))


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


@dataclass(kw_only=True)
class Part(Record):
    """A stem, block, head or shared module; blocks have a ``name`` and an ``out_shape``.

    A part type's record names its ``TAG`` (the spec's ``"type"``) and its ``BUILDER``, the
    module of stagetrain or of a family plug that registers how it is built
    (``models/registry.register``). Defining the record declares it (``declared``); a
    family plug declares its own in its torch-free ``config.py`` or a module it imports.
    """

    BUILDER: ClassVar[str] = ""  # the module that registers this part type's builder
    declared: ClassVar[dict[str, type[Part]]] = {}  # TAG -> record, every part type defined so far

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        tag = cls.__dict__.get("TAG")
        if not tag:
            return
        had = Part.declared.get(tag)
        if had is not None and (had.__module__, had.__qualname__) != (cls.__module__, cls.__qualname__):
            raise StagetrainError(f"{cls.__module__}.{cls.__qualname__} declares the part type {tag!r}, which "
                                  f"{had.__module__}.{had.__qualname__} declares already: a part type has one record.")
        Part.declared[tag] = cls


@dataclass(kw_only=True)
class Block(Part):
    name: str
    out_shape: list[int] | None = None


@dataclass(kw_only=True)
class Head(Part):
    inp: int | None = None
    out: int

"""Labelled examples from a JSONL file (one object a line) or a CSV / TSV file with a
header row, read as data: every line bounded in length and nesting, every example with a
text and a label, and numeric labels taken by value (``label_name``). Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError

MAX_LINE_CHARS = 1024**2  # one JSONL example line; a CSV field is bounded by csv.field_size_limit
MAX_JSON_DEPTH = 32  # an example is a flat object; deeper nesting is not data we read


def read_table(path: Path, fmt: str, text_field: str, label_field: str, key: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of a JSONL file (one object a line) or a CSV file with a header row
    (tab-separated when it is named .tsv). Every example needs a text and a label: a missing,
    null or empty label is refused naming the line, never turned into a class."""
    raw = userfile.read_text(path, key, "data")
    rows = _jsonl_rows(raw, path, key) if fmt == "jsonl" else _csv_rows(raw, path, key)
    if not rows:
        raise StagetrainError(f"{key}: {path} holds no examples.")
    texts, labels = [], []
    for line, row in rows:
        for field, option in ((text_field, "text_field"), (label_field, "label_field")):
            if field not in row:
                raise StagetrainError(
                    f"{key}: line {line} of {path} has no '{field}' field (it has {sorted(row)}). Name the "
                    f"columns with dataset.{option}=<column>.")
        text, label = row[text_field], row[label_field]
        for field, value in ((text_field, text), (label_field, label)):
            if isinstance(value, (dict, list)):
                raise StagetrainError(f"{key}: line {line} of {path}: its '{field}' is a JSON "
                                      f"{'object' if isinstance(value, dict) else 'list'}, not a string or number.")
        if label is None or not str(label).strip():
            raise StagetrainError(
                f"{key}: line {line} of {path} has no label (its '{label_field}' is "
                f"{'null' if fmt == 'jsonl' and label is None else 'missing' if label is None else 'empty'}). "
                "Every example needs one: label it or remove the line.")
        if text is not None and str(text).strip():  # an empty text has no token to classify
            texts.append(str(text))
            labels.append(label_name(label))
    return texts, labels


def _jsonl_rows(raw: str, path: Path, key: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object, is
    longer than MAX_LINE_CHARS or nests deeper than MAX_JSON_DEPTH is refused naming it."""
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise StagetrainError(f"{key}: line {n} of {path} is {len(line):,} characters long, more than the "
                                  f"{MAX_LINE_CHARS:,} an example line may have (an example is cut to "
                                  "dataset.max_len tokens anyway); shorten it.")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise StagetrainError(f"{key}: line {n} of {path} is not JSON ({e.msg}).") from None
        except RecursionError:
            row = None
        if row is None or (isinstance(row, (dict, list)) and _depth(row) > MAX_JSON_DEPTH):
            raise StagetrainError(f"{key}: line {n} of {path} nests JSON values more than {MAX_JSON_DEPTH} "
                                  "levels deep; an example is one flat object, e.g. {\"text\": ..., \"label\": ...}.")
        if not isinstance(row, dict):
            raise StagetrainError(f"{key}: line {n} of {path} is a JSON {_json_kind(row)}, not an object; each "
                                  'line must be one object, e.g. {"text": "...", "label": "..."}.')
        rows.append((n, row))
    return rows


def _csv_rows(raw: str, path: Path, key: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV / TSV file with a header row; quoted fields may span lines.
    A field over ``csv.field_size_limit`` is refused naming the line."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=sep)
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, {k: v for k, v in row.items() if k is not None}))
    except csv.Error as e:
        raise StagetrainError(f"{key}: line {reader.line_num + 1} of {path} cannot be read as CSV ({e}); a field "
                              f"may have at most {csv.field_size_limit():,} characters.") from None
    return rows


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d <= MAX_JSON_DEPTH:
            stack += [(c, d + 1) for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list))]
    return deepest


def label_name(value: Any) -> str:
    """The class a label names: a finite number by its value (1, 1.0, "01" and "1.0" are all
    class "1"; 0.50 is "0.5"), anything else as written."""
    text = str(value)
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return text
    if not number.is_finite() or abs(number.adjusted()) > 30:  # 1e5000 is a name, not a class number
        return text
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")

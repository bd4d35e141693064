"""metrics.jsonl as a table: every record flattened into named values, one column each. The CSV
export and the TensorBoard tags both name values this way. Torch-free.

A record's plain fields keep their names (``step``, ``train_loss``, ``lr``, ``val_acc``,
``compression``, ``samples``); nested ones become ``<field>/<part>``:

  layers record  ``rank/<layer>``, ``full_rank/<layer>``, ``kappa/<layer>``, ``sigma_max/<layer>``
  attack record  ``adv/<attack>/<ε>``: accuracy under that attack at budget ε (ε written as ``{:g}``,
                 e.g. ``adv/fgsm/0.02``), beside ``attack`` and ``samples``
  anything else  a dict field ``f`` → ``f/<key>``; a list field → ``f/0``, ``f/1``, …
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

LAYER_FIELDS = ("rank", "full_rank", "kappa", "sigma_max")
LEADING_COLUMNS = ("type", "step", "epoch")


def adversarial_column(attack: str, eps: float) -> str:
    return f"adv/{attack}/{eps:g}"


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """One metrics record as ``{column: plain value}`` (see the module docstring for the names)."""
    flat: dict[str, Any] = {}
    is_attack = record.get("type") == "attack"
    for key, value in record.items():
        if key == "layers" and isinstance(value, list):
            for layer in value:
                for field in LAYER_FIELDS:
                    if field in layer:
                        flat[f"{field}/{layer['name']}"] = layer[field]
        elif is_attack and key in ("eps", "accuracy"):
            continue  # paired below
        else:
            _flatten_into(flat, key, value)
    if is_attack:
        for eps, accuracy in zip(record.get("eps", ()), record.get("accuracy", ())):
            flat[adversarial_column(record["attack"], eps)] = accuracy
    return flat


def _flatten_into(flat: dict[str, Any], name: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_into(flat, f"{name}/{key}", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten_into(flat, f"{name}/{index}", item)
    else:
        flat[name] = value


def metrics_table(records: Iterable[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): a row per record; columns ``type``, ``step``, ``epoch`` first, then every
    other column in the order it first appears. A row lacks the columns its record has no value for."""
    rows = [flatten_record(record) for record in records]
    columns = list(LEADING_COLUMNS)
    seen = set(columns)
    for row in rows:
        for column in row:
            if column not in seen:
                seen.add(column)
                columns.append(column)
    return columns, rows

"""Strict, atomic JSON output shared by the trainer, the matrix runner and the report."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepset_moe.atomic_io import atomic_write


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON data: NaN / inf floats become ``None``, numpy / torch scalars
    become Python numbers, tuples become lists and mapping keys become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return json_safe(value.item())
    return value


def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``json_safe(payload)`` atomically (:func:`deepset_moe.atomic_io.atomic_write`;
    parent folders are created)."""
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")

"""Strict, atomic JSON output shared by the trainer, the matrix runner and the report."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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
    """Write ``json_safe(payload)`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)

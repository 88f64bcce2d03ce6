"""The one JSON cleaner: nested values as plain JSON/YAML data (dicts with str keys, lists, Python scalars),
and the one reader of a JSON object file that a user may have damaged (``read_json_object``).

Standard library and histo.errors only (numpy scalars are recognised without importing numpy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Literal

from histo.errors import HistoError

NonFinite = Literal["null", "keep", "text"]


def json_safe(obj: Any, *, non_finite: NonFinite = "null", unknown: Literal["keep", "str"] = "keep") -> Any:
    """``obj`` as plain JSON values: mappings → dicts with str keys, tuples/lists → lists, numpy scalars → Python,
    paths → str. NaN/±inf become None (``non_finite="null"``, the default), stay floats ("keep") or become the
    strings 'nan'/'inf'/'-inf' ("text", for YAML that a config loader reads back); other objects stay as they are,
    or become ``str(obj)`` with ``unknown="str"`` (as ``json.dumps(default=str)`` would)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, non_finite=non_finite, unknown=unknown) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, non_finite=non_finite, unknown=unknown) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        if non_finite == "null":
            return None
        return str(obj) if non_finite == "text" else obj
    if isinstance(obj, PurePath):
        return str(obj)
    if unknown == "str" and not isinstance(obj, (str, int, float, bool, type(None))):
        return str(obj)
    return obj


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; HistoError naming the file when it cannot be read or is not an object."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HistoError(f"{p}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise HistoError(f"{p}: expected a JSON object")
    return data

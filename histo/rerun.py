"""Run keys: the settings that determine an output folder's result, and why a finished folder is redone.

Every batch command stores a ``run_settings`` block in the completion mark of each output folder (the
slide file's size and mtime, its µm/px, the tiling/tissue settings, the model, the panel or grading
rules that shaped the result). A rerun builds the same block and compares it field by field: equal
means 'skipped'; any difference redoes the folder and names the fields, e.g. "redone: mpp 0.5 → 0.25".
Imports only the leaf histo.jsonsafe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histo.jsonsafe import json_safe

RUN_SETTINGS_KEY = "run_settings"
NO_RECORD = "no run settings recorded (made by an older histo)"
_MISSING = object()


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, int]:
    """A file's size and modification time (ns): changes whenever the file is rewritten or replaced."""
    st = os.stat(path)
    return {"size_bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists, keys → str), so stored and fresh keys compare."""
    return json_safe(value, non_finite="keep", unknown="str")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _show(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 24 else text[:12] + "…"


def describe_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between a stored run key and a fresh one, one phrase per field ([] when equal)."""
    if not isinstance(old, Mapping):
        return [NO_RECORD]
    a, b = _flatten(plain(old)), _flatten(plain(new))
    found: list[tuple[tuple[int, str], str]] = []
    files: set[str] = set()
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
        if va == vb:
            continue
        if k.endswith(("size_bytes", "mtime_ns")):  # a file fingerprint reads as one change of that file
            owner = k.rsplit(".", 1)[0] if "." in k else "file"
            if owner not in files:
                files.add(owner)
                found.append(((owner.count("."), owner), f"{owner} file changed"))
            continue
        if va is _MISSING:
            text = f"{k} added ({_show(vb)})"
        elif vb is _MISSING:
            text = f"{k} no longer set (was {_show(va)})"
        else:
            text = f"{k} {_show(va)} → {_show(vb)}"
        found.append(((k.count("."), k), text))
    return [text for _, text in sorted(found)]


def redo_reason(changes: list[str], limit: int = 4) -> str:
    """The status reason of a redone folder: "redone: mpp 0.5 → 0.25; tiling.grid.overlap_px 0 → 8"."""
    shown = changes[:limit]
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return "redone: " + "; ".join(shown) + more


def stored_settings(record: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The run key inside a completion record (prediction.json, ihc.json, grid settings), or None."""
    if not isinstance(record, Mapping):
        return None
    value = record.get(RUN_SETTINGS_KEY)
    return value if isinstance(value, Mapping) else None


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object file, or None when absent or unreadable (unreadable leftovers are redone)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
